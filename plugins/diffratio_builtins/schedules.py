"""Built-in noise schedules: EDM log-normal and log-uniform sigma."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from diffratio import NoiseSchedule
from diffratio.config import setting


class LogNormal(NoiseSchedule):
    """EDM log-normal: ln sigma ~ N(p_mean, p_std^2), clamped to [sigma_min, sigma_max]."""

    @attrs.frozen(kw_only=True)
    class Config:
        p_mean: float = setting(-1.2, "mean of ln sigma (pixels; -0.4 suits latents)")
        p_std: float = setting(1.2, "standard deviation of ln sigma (pixels; 1.0 suits latents)", gt=0)
        sigma_min: float = setting(0.002, "lower clamp of sigma", gt=0)
        sigma_max: float = setting(80.0, "upper clamp of sigma", gt=0)

    def sample(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        c = self.config
        sigma = torch.exp(c.p_mean + c.p_std * torch.randn(n, device=device))
        return sigma.clamp(c.sigma_min, c.sigma_max)


class LogUniform(NoiseSchedule):
    """ln sigma uniform on [ln sigma_min, ln sigma_max]."""

    @attrs.frozen(kw_only=True)
    class Config:
        sigma_min: float = setting(0.002, "lower end of the range of sigma", gt=0)
        sigma_max: float = setting(80.0, "upper end of the range of sigma", gt=0)

    def sample(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        lo, hi = math.log(self.config.sigma_min), math.log(self.config.sigma_max)
        return torch.exp(lo + (hi - lo) * torch.rand(n, device=device))
