"""A residual MLP backbone with noise-level (and optional class) conditioning, for 2-D and small data."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor, nn

from diffratio import Backbone


class FourierNoiseEmbedding(nn.Module):
    """sin/cos features of the noise label at geometrically spaced frequencies."""

    def __init__(self, dim: int, max_period: float = 100.0) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half) / max(half - 1, 1)) * 2 * math.pi
        self.register_buffer("freqs", freqs * max_period / 10.0, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        arg = t.float()[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class MLPBackbone(Backbone):
    """``depth`` residual SiLU blocks of width ``hidden``; conditioning is added to the input projection.

    ``full`` mode ends in a zero-initialised linear layer back to the data size; ``encoder`` mode returns
    the last hidden activations (``feature_dim = hidden``) under the same parameter names.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        hidden: int = attrs.field(default=128, validator=attrs.validators.gt(0))  # width of every layer
        depth: int = attrs.field(default=3, validator=attrs.validators.ge(1))  # residual blocks
        embed_dim: int = attrs.field(default=64, validator=attrs.validators.gt(1))  # noise features
        dropout: float = 0.0  # dropout probability inside each residual block

    def __init__(self, config: Config, *, data_shape: tuple[int, ...], num_labels: int = 0,
                 mode: str = "full") -> None:
        super().__init__(config, data_shape=data_shape, num_labels=num_labels, mode=mode)
        c = config
        self.in_dim = math.prod(data_shape)
        self.noise_embed = FourierNoiseEmbedding(c.embed_dim)
        self.cond = nn.Sequential(nn.Linear(c.embed_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.label_embed = nn.Embedding(num_labels, c.hidden) if num_labels else None
        self.inp = nn.Linear(self.in_dim, c.hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(c.hidden, c.hidden), nn.SiLU(), nn.Dropout(c.dropout),
                          nn.Linear(c.hidden, c.hidden))
            for _ in range(c.depth))
        if mode == "full":
            self.out = nn.Linear(c.hidden, self.in_dim)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    @property
    def feature_dim(self) -> int:
        return self.config.hidden

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        h = self.inp(x.flatten(1)) + self.cond(self.noise_embed(noise_labels))
        lab = self.embed_labels(self.label_embed, class_labels)
        if lab is not None:
            h = h + lab
        for block in self.blocks:
            h = h + block(h)
        h = torch.nn.functional.silu(h)
        if self.mode == "encoder":
            return h
        return self.out(h).reshape(x.shape)
