"""A third-party diffratio plugin: a divergence and a backbone, registered through the entry point."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

import diffratio


class SquaredHellinger(diffratio.Divergence):
    """F(r) = (sqrt(r) - 1)^2, so h(f) = r^2 F''(r) = sqrt(r) / 2 = exp(-f / 2) / 2."""

    def weight(self, f: Tensor) -> Tensor:
        return 0.5 * torch.exp(-0.5 * f.clamp(min=-20.0))

    def F(self, r: Tensor) -> Tensor:
        return (torch.sqrt(r) - 1) ** 2


class TinyBackbone(diffratio.Backbone):
    """Two tanh layers; encoder mode returns the hidden layer."""

    @attrs.frozen(kw_only=True)
    class Config:
        width: int = 32

    def __init__(self, config: Config, *, data_shape: tuple[int, ...], num_labels: int = 0,
                 mode: str = "full") -> None:
        super().__init__(config, data_shape=data_shape, num_labels=num_labels, mode=mode)
        d = data_shape[0]
        self.hidden = nn.Sequential(nn.Linear(d + 1, config.width), nn.Tanh(), nn.Linear(config.width, config.width),
                                    nn.Tanh())
        if mode == "full":
            self.out = nn.Linear(config.width, d)

    @property
    def feature_dim(self) -> int:
        return self.config.width

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        h = self.hidden(torch.cat([x, noise_labels[:, None].to(x.dtype)], dim=1))
        return h if self.mode == "encoder" else self.out(h)


@diffratio.hookimpl
def diffratio_divergences():
    yield diffratio.DivergenceSpec(name="sq-hellinger", cls=SquaredHellinger, description="squared Hellinger")


@diffratio.hookimpl
def diffratio_backbones():
    yield diffratio.BackboneSpec(name="tiny", cls=TinyBackbone, description="two tanh layers")
