"""A small backbone: an MLP whose hidden layers the noise level scales and shifts (FiLM)."""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from diffratio import Backbone, setting
from torch import Tensor, nn


class FiLMBackbone(Backbone):
    """Residual SiLU layers over the flattened sample; sin/cos features of the noise label (plus a class
    embedding) give each layer a scale and a shift through a zero-initialised linear map.

    ``full`` mode ends in a zero-initialised layer back to the data shape; ``encoder`` mode returns the
    last hidden features (``feature_dim = hidden``) under the same parameter names, so a ratio estimator
    can start from a pretrained denoiser.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        hidden: int = setting(64, "width of the hidden layers", gt=0)
        depth: int = setting(2, "residual layers, each modulated by the noise level", ge=1)
        frequencies: int = setting(8, "sin/cos pairs of the noise label's features", ge=1)

    def __init__(self, config: Config, *, data_shape: tuple[int, ...], num_labels: int = 0,
                 mode: str = "full") -> None:
        super().__init__(config, data_shape=data_shape, num_labels=num_labels, mode=mode)
        c = config
        dim = math.prod(self.data_shape)
        cond = 2 * c.frequencies
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(32.0), c.frequencies)),
                             persistent=False)
        self.label_embed = nn.Embedding(num_labels, cond) if num_labels else None
        self.inp = nn.Linear(dim, c.hidden)
        self.layers = nn.ModuleList(nn.Linear(c.hidden, c.hidden) for _ in range(c.depth))
        self.film = nn.ModuleList(nn.Linear(cond, 2 * c.hidden) for _ in range(c.depth))
        for layer in self.film:  # start without modulation: scale 1, shift 0
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if mode == "full":
            self.out = nn.Linear(c.hidden, dim)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    @property
    def feature_dim(self) -> int:
        return self.config.hidden

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        t = noise_labels.to(x.dtype)[:, None] * self.freqs
        cond = torch.cat([t.sin(), t.cos()], dim=1)
        lab = self.embed_labels(self.label_embed, class_labels)  # None when unconditional
        if lab is not None:
            cond = cond + lab
        h = self.inp(x.flatten(1))
        for layer, film in zip(self.layers, self.film, strict=True):
            scale, shift = film(cond).chunk(2, dim=1)
            h = h + layer(F.silu(h)) * (1 + scale) + shift
        h = F.silu(h)
        return h if self.mode == "encoder" else self.out(h).reshape(x.shape)
