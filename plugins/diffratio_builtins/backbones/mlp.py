"""A residual MLP backbone with noise-level (and optional class) conditioning, for 2-D and small data."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor, nn

from diffratio import Backbone
from diffratio.config import setting


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


def _even(_instance: object, _attribute: attrs.Attribute, value: int) -> None:
    """Validator: a count of sin/cos feature pairs, so even and at least 0."""
    if value < 0 or value % 2:
        raise ValueError(f"must be an even number >= 0, for sin and cos pairs, got {value}")


class MLPBackbone(Backbone):
    """``depth`` residual SiLU blocks of width ``hidden``; conditioning is added to the input projection.

    ``full`` mode ends in a zero-initialised linear layer back to the data size; ``encoder`` mode returns
    the last hidden activations (``feature_dim = hidden``) under the same parameter names.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        hidden: int = setting(128, "width of every layer", ge=1)
        depth: int = setting(3, "residual blocks", ge=1)
        embed_dim: int = setting(64, "noise-level features", ge=2)
        dropout: float = setting(0.0, "dropout probability inside each residual block", ge=0, lt=1,
                                 structural=False)
        input_features: int = setting(0, "random Fourier features of the input added to it (sin and cos of "
                                      "input_features / 2 projections; 0 = off): sharper maps, such as a one-step "
                                      "generator's jumps between modes", validator=_even)
        input_scale: float = setting(1.0, "standard deviation of those features' frequencies (cycles per unit "
                                     "of the input)", gt=0, structural=False)

    def __init__(self, config: Config, *, data_shape: tuple[int, ...], num_labels: int = 0,
                 mode: str = "full") -> None:
        super().__init__(config, data_shape=data_shape, num_labels=num_labels, mode=mode)
        c = config
        self.in_dim = math.prod(data_shape)
        self.noise_embed = FourierNoiseEmbedding(c.embed_dim)
        self.cond = nn.Sequential(nn.Linear(c.embed_dim, c.hidden), nn.SiLU(), nn.Linear(c.hidden, c.hidden))
        self.label_embed = nn.Embedding(num_labels, c.hidden) if num_labels else None
        # fixed frequencies from a fixed seed (the global RNG stream is untouched); saved with the weights, so
        # a run initialised from another (method.init) uses that run's features
        freqs = torch.randn(self.in_dim, c.input_features // 2, generator=torch.Generator().manual_seed(0))
        self.register_buffer("input_freqs", freqs * c.input_scale, persistent=c.input_features > 0)
        self.inp = nn.Linear(self.in_dim + c.input_features, c.hidden)
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

    def input_with_features(self, x: Tensor) -> Tensor:
        """``x`` (flattened), followed by sin and cos of ``2 pi x B`` when ``input_features`` > 0."""
        if not self.config.input_features:
            return x
        arg = 2 * math.pi * x @ self.input_freqs.to(x.dtype)
        return torch.cat([x, arg.sin(), arg.cos()], dim=1)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        h = self.inp(self.input_with_features(x.flatten(1))) + self.cond(self.noise_embed(noise_labels))
        lab = self.embed_labels(self.label_embed, class_labels)
        if lab is not None:
            h = h + lab
        for block in self.blocks:
            h = h + block(h)
        h = torch.nn.functional.silu(h)
        if self.mode == "encoder":
            return h
        return self.out(h).reshape(x.shape)
