"""Built-in divergences: the weight h(f) = r^2 F''(r), r = exp(-f), of docs/concepts.md section 3."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import attrs
import torch
from torch import Tensor

from diffratio import Divergence


class ReverseKL(Divergence):
    """KL(q || p), the "diffusive KL" that VSD/DMD minimise: F(r) = -log r, h = 1. Mode seeking."""

    def weight(self, f: Tensor) -> Tensor:
        return torch.ones_like(f)

    def F(self, r: Tensor) -> Tensor:
        return -torch.log(r)


class ForwardKL(Divergence):
    """KL(p || q): F(r) = r log r, h = r = exp(-f). Mass covering; f is clamped to avoid overflow."""

    @attrs.frozen(kw_only=True)
    class Config:
        max_log_weight: float = 5.0  # h = exp(min(-f, max_log_weight)): caps one sample's weight at e^5

    def weight(self, f: Tensor) -> Tensor:
        return torch.exp(torch.clamp(-f, max=self.config.max_log_weight))

    def F(self, r: Tensor) -> Tensor:
        return r * torch.log(r)


class JensenShannon(Divergence):
    """DiJS, the headline variant: F(r) = (r log r - (1 + r) log((1 + r) / 2)) / 2, h = sigmoid(-f) / 2."""

    def weight(self, f: Tensor) -> Tensor:
        return 0.5 * torch.sigmoid(-f)

    def F(self, r: Tensor) -> Tensor:
        return 0.5 * (r * torch.log(r) - (1 + r) * torch.log((1 + r) / 2))


# Named F and their h(f) = r^2 F''(r) in terms of log r = -f (stable, no division).
F_FUNCTIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "reverse-kl": (lambda r: -torch.log(r), lambda lr: torch.ones_like(lr)),
    "kl": (lambda r: r * torch.log(r), lambda lr: torch.exp(lr)),
    "js": (lambda r: 0.5 * (r * torch.log(r) - (1 + r) * torch.log((1 + r) / 2)),
           lambda lr: 0.5 * torch.sigmoid(lr)),
    # squared Hellinger (sqrt r - 1)^2: F'' = r^(-3/2) / 2, h = sqrt(r) / 2
    "hellinger": (lambda r: (torch.sqrt(r) - 1) ** 2, lambda lr: 0.5 * torch.exp(0.5 * lr)),
    # Pearson chi^2 (r - 1)^2: F'' = 2, h = 2 r^2
    "pearson": (lambda r: (r - 1) ** 2, lambda lr: 2 * torch.exp(2 * lr)),
}


class FDivergence(Divergence):
    """Any f-divergence named in ``F_FUNCTIONS``; the log weight is clamped like the forward KL."""

    @attrs.frozen(kw_only=True)
    class Config:
        function: Literal["reverse-kl", "kl", "js", "hellinger", "pearson"] = "hellinger"
        # ^ which F: reverse KL, forward KL, Jensen-Shannon, squared Hellinger or Pearson chi^2 (F_FUNCTIONS)
        max_log_weight: float = 5.0  # clamp of log h, keeps weights of rare samples bounded

    def weight(self, f: Tensor) -> Tensor:
        h = F_FUNCTIONS[self.config.function][1](-f)
        return torch.clamp(h, max=math.exp(self.config.max_log_weight))

    def F(self, r: Tensor) -> Tensor:
        return F_FUNCTIONS[self.config.function][0](r)
