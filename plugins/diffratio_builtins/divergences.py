"""Built-in divergences: one f-divergence implementation and its named presets.

The generator loss needs only the weight ``h(f) = r^2 F''(r)`` with ``r = p/q = exp(-f)`` (docs/concepts.md
section 3). Each named ``F`` comes with its ``h`` in terms of ``log r = -f`` (stable, no division) and the
log ratio at which ``h`` reaches a cap ``e^max_log_weight``: the log ratio is clamped there, which bounds the
weight of rare "real-looking" samples without changing ``h`` below the cap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, Literal

import attrs
import torch
from torch import Tensor

from diffratio import Divergence, EmptyConfig
from diffratio.config import setting

FunctionName = Literal["reverse-kl", "kl", "js", "hellinger", "pearson"]


@attrs.frozen
class FFunction:
    """``F(r)``, ``h(log r) = r^2 F''(r)``, and the log ratio where ``log h`` reaches ``m`` (``h`` increasing)."""

    F: Callable[[Tensor], Tensor]
    h: Callable[[Tensor], Tensor]
    log_ratio_at: Callable[[float], float]


def _js_cap(m: float) -> float:
    # h = sigmoid(lr) / 2 < 1/2: no cap needed unless it lies below 1/2
    return math.inf if m >= math.log(0.5) else math.log(2 * math.exp(m) / (1 - 2 * math.exp(m)))


F_FUNCTIONS: dict[str, FFunction] = {
    "reverse-kl": FFunction(lambda r: -torch.log(r), lambda lr: torch.ones_like(lr),
                            lambda m: math.inf if m >= 0 else -math.inf),
    "kl": FFunction(lambda r: r * torch.log(r), torch.exp, lambda m: m),
    "js": FFunction(lambda r: 0.5 * (r * torch.log(r) - (1 + r) * torch.log((1 + r) / 2)),
                    lambda lr: 0.5 * torch.sigmoid(lr), _js_cap),
    # squared Hellinger (sqrt r - 1)^2: F'' = r^(-3/2) / 2, h = sqrt(r) / 2
    "hellinger": FFunction(lambda r: (torch.sqrt(r) - 1) ** 2, lambda lr: 0.5 * torch.exp(0.5 * lr),
                           lambda m: 2 * (m - math.log(0.5))),
    # Pearson chi^2 (r - 1)^2: F'' = 2, h = 2 r^2
    "pearson": FFunction(lambda r: (r - 1) ** 2, lambda lr: 2 * torch.exp(2 * lr), lambda m: (m - math.log(2)) / 2),
}


class FDivergence(Divergence):
    """Any f-divergence named in ``F_FUNCTIONS``: ``h(min(-f, c))`` with ``h(c) = e^max_log_weight``."""

    #: the F of a preset; None reads ``config.function``
    preset: ClassVar[FunctionName | None] = None

    @attrs.frozen(kw_only=True)
    class Config:
        function: Literal["reverse-kl", "kl", "js", "hellinger", "pearson"] = setting(
            "hellinger", "which F: reverse KL, forward KL, Jensen-Shannon, squared Hellinger or Pearson chi^2")
        max_log_weight: float = setting(5.0, "cap of log h: bounds the weight of rare real-looking samples")

    @property
    def function(self) -> FFunction:
        return F_FUNCTIONS[self.preset or self.config.function]

    @property
    def max_log_weight(self) -> float:
        """The cap of ``log h``; a preset without the setting has a bounded ``h`` and no cap."""
        return getattr(self.config, "max_log_weight", math.inf)

    def weight(self, f: Tensor) -> Tensor:
        cap = self.function.log_ratio_at(self.max_log_weight)
        lr = -f if cap == math.inf else torch.clamp(-f, max=cap)
        return self.function.h(lr)

    def F(self, r: Tensor) -> Tensor:
        return self.function.F(r)


class ReverseKL(FDivergence):
    """KL(q || p), the "diffusive KL" that VSD/DMD minimise: F(r) = -log r, h = 1. Mode seeking."""

    preset = "reverse-kl"

    Config = EmptyConfig


class ForwardKL(FDivergence):
    """KL(p || q): F(r) = r log r, h = r = exp(-f), capped. Mass covering."""

    preset = "kl"

    @attrs.frozen(kw_only=True)
    class Config:
        max_log_weight: float = setting(5.0, "h = exp(min(-f, max_log_weight)): caps one sample's weight")


class JensenShannon(FDivergence):
    """DiJS, the headline variant: F(r) = (r log r - (1 + r) log((1 + r) / 2)) / 2, h = sigmoid(-f) / 2."""

    preset = "js"

    Config = EmptyConfig
