"""Built-in noise schedules: EDM log-normal and log-uniform sigma, with the loss weightings."""

from __future__ import annotations

import math
from typing import Literal

import attrs
import torch
from torch import Tensor

from diffratio import NoiseSchedule

Weighting = Literal["sigma2", "one", "snr", "edm"]


def apply_weighting(kind: str, sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """``sigma2``: w = sigma^2 (sigma^2 grad f is in data units; the default, and VSD's), ``one``: w = 1
    (what the DiffRatio recipes use: measured far better on 2-D data and Fashion-MNIST, docs/results.md
    section 8, since sigma^2 leaves the small noise levels that resolve detail almost no weight),
    ``snr``: w = sigma^2 / (sigma^2 + sigma_data^2) (bounded), ``edm``: EDM's 1 / c_out^2."""
    if kind == "sigma2":
        return sigma**2
    if kind == "one":
        return torch.ones_like(sigma)
    if kind == "snr":
        return sigma**2 / (sigma**2 + sigma_data**2)
    if kind == "edm":
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    raise ValueError(f"unknown weighting {kind!r}")


class LogNormal(NoiseSchedule):
    """EDM log-normal: ln sigma ~ N(p_mean, p_std^2), clamped to [sigma_min, sigma_max]."""

    @attrs.frozen(kw_only=True)
    class Config:
        p_mean: float = -1.2  # pixel default; -0.4 for latents
        p_std: float = 1.2  # 1.0 for latents
        sigma_min: float = 0.002  # lower clamp of sigma
        sigma_max: float = 80.0  # upper clamp of sigma
        generator_weighting: Weighting = "sigma2"  # w(sigma) of the generator loss
        ratio_weighting: Weighting = "one"  # lambda(sigma) of the ratio loss
        sigma_data: float = 0.5  # only for the "snr" and "edm" weightings

    def sample(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        c = self.config
        sigma = torch.exp(c.p_mean + c.p_std * torch.randn(n, device=device))
        return sigma.clamp(c.sigma_min, c.sigma_max)

    def generator_weight(self, sigma: Tensor) -> Tensor:
        return apply_weighting(self.config.generator_weighting, sigma, self.config.sigma_data)

    def ratio_weight(self, sigma: Tensor) -> Tensor:
        return apply_weighting(self.config.ratio_weighting, sigma, self.config.sigma_data)


class LogUniform(NoiseSchedule):
    """ln sigma uniform on [ln sigma_min, ln sigma_max]."""

    @attrs.frozen(kw_only=True)
    class Config:
        sigma_min: float = 0.002  # lower end of the range of sigma
        sigma_max: float = 80.0  # upper end of the range of sigma
        generator_weighting: Weighting = "sigma2"  # w(sigma) of the generator loss
        ratio_weighting: Weighting = "one"  # lambda(sigma) of the ratio loss
        sigma_data: float = 0.5  # only for the "snr" and "edm" weightings

    def sample(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        lo, hi = math.log(self.config.sigma_min), math.log(self.config.sigma_max)
        return torch.exp(lo + (hi - lo) * torch.rand(n, device=device))

    def generator_weight(self, sigma: Tensor) -> Tensor:
        return apply_weighting(self.config.generator_weighting, sigma, self.config.sigma_data)

    def ratio_weight(self, sigma: Tensor) -> Tensor:
        return apply_weighting(self.config.ratio_weighting, sigma, self.config.sigma_data)
