"""EDM preconditioning (Karras et al. 2022) around any Backbone, and the Heun sampler."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffratio.components import Backbone, append_dims


def c_noise(sigma: Tensor) -> Tensor:
    """The network's noise label: ln(sigma) / 4."""
    return sigma.log() / 4


class EDMDenoiser(nn.Module):
    """``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise(sigma))``: the denoiser a diffusion model learns.

    Wraps a ``Backbone`` in ``full`` mode; its state dict is ``backbone.*``, so a pretrained denoiser loads
    into any generator or ratio estimator built over the same backbone.
    """

    def __init__(self, backbone: Backbone, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.backbone = backbone
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        sigma = sigma.to(x.dtype).reshape(-1).expand(x.shape[0])
        s = append_dims(sigma, x.ndim)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / (s**2 + sd2).sqrt()
        c_in = 1 / (s**2 + sd2).sqrt()
        F_x = self.backbone(c_in * x, c_noise(sigma), class_labels)
        return c_skip * x + c_out * F_x.to(x.dtype)


def edm_sigma_steps(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                    rho: float = 7.0, device: torch.device | str = "cpu") -> Tensor:
    """The EDM time discretisation, ``num_steps`` levels from sigma_max to sigma_min, then 0."""
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    t = (sigma_max ** (1 / rho) + i / max(num_steps - 1, 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho)))
    t = t**rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64, device=device)])


@torch.no_grad()
def heun_sample(denoiser: nn.Module, noise: Tensor, class_labels: Tensor | None = None,
                num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
                rho: float = 7.0) -> Tensor:
    """Deterministic EDM Heun sampler: ``2 * num_steps - 1`` network evaluations per sample."""
    steps = edm_sigma_steps(num_steps, sigma_min, sigma_max, rho, noise.device)
    x = noise.to(torch.float64) * steps[0]
    for i in range(num_steps):
        s_cur, s_next = steps[i], steps[i + 1]
        d_cur = (x - _eval(denoiser, x, s_cur, class_labels)) / s_cur
        x_next = x + (s_next - s_cur) * d_cur
        if i < num_steps - 1:
            d_next = (x_next - _eval(denoiser, x_next, s_next, class_labels)) / s_next
            x_next = x + (s_next - s_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x.to(noise.dtype)


def _eval(denoiser: nn.Module, x: Tensor, sigma: Tensor, labels: Tensor | None) -> Tensor:
    dtype = next(denoiser.parameters()).dtype
    s = torch.full((x.shape[0],), float(sigma), device=x.device, dtype=dtype)
    return denoiser(x.to(dtype), s, labels).to(torch.float64)


__all__ = ["EDMDenoiser", "c_noise", "edm_sigma_steps", "heun_sample"]
