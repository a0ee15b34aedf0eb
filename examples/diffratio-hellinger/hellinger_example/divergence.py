"""The squared Hellinger distance as a diffratio divergence."""

from __future__ import annotations

import math

import attrs
import torch
from diffratio import Divergence, setting
from torch import Tensor


class SquaredHellinger(Divergence):
    """``F(r) = (sqrt(r) - 1)^2``, so the generator loss weight is ``h(f) = r^2 F''(r) = sqrt(r) / 2``.

    With ``r = p / q = exp(-f)``: samples the data finds likelier than the generator does (f < 0) weigh
    more, as sqrt(r), between the reverse KL (h = 1) and the forward KL (h = r).
    """

    @attrs.frozen(kw_only=True)
    class Config:
        max_log_weight: float = setting(10.0, "clamp of log h(f); 10 leaves h exact for f >= -21.4")

    def weight(self, f: Tensor) -> Tensor:
        log_h = -0.5 * f - math.log(2.0)
        return torch.exp(torch.clamp(log_h, max=self.config.max_log_weight))

    def F(self, r: Tensor) -> Tensor:
        return (torch.sqrt(r) - 1) ** 2
