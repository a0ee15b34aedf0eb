"""The two DiffRatio losses (docs/concepts.md sections 2 and 3), their sigma weightings, and the EDM
denoising loss (section 6)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from diffratio.components import Divergence

#: a loss weighting over noise levels: ``one`` w = 1; ``sigma2`` w = sigma^2 (``sigma^2 grad f`` is in data
#: units); ``snr`` w = sigma^2 / (sigma^2 + sigma_data^2) (bounded); ``edm`` EDM's 1 / c_out^2
Weighting = Literal["one", "sigma2", "snr", "edm"]


def apply_weighting(kind: Weighting, sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """The weight ``w(sigma)`` of each sample under the weighting ``kind`` (see ``Weighting``)."""
    if kind == "sigma2":
        return sigma**2
    if kind == "one":
        return torch.ones_like(sigma)
    if kind == "snr":
        return sigma**2 / (sigma**2 + sigma_data**2)
    if kind == "edm":
        return edm_loss_weight(sigma, sigma_data)
    raise ValueError(f"unknown weighting {kind!r}; choose one of one, sigma2, snr, edm")


def ratio_loss(logits_fake: Tensor, logits_real: Tensor, weight_fake: Tensor | None = None,
               weight_real: Tensor | None = None) -> Tensor:
    """Time-conditional logistic loss; generated samples are class 1, data class 0.

    ``E_q softplus(-f) + E_p softplus(f)``, each term weighted per sample by lambda(sigma). With balanced
    classes its minimiser is ``f = log q_sigma - log p_sigma``.
    """
    lf = F.softplus(-logits_fake)
    lr = F.softplus(logits_real)
    if weight_fake is not None:
        lf = lf * weight_fake
    if weight_real is not None:
        lr = lr * weight_real
    return lf.mean() + lr.mean()


def generator_loss(f: Tensor, divergence: Divergence, weight: Tensor) -> Tensor:
    """Surrogate loss ``E[w(sigma) * stopgrad(h(f)) * f(x_sigma(theta))]``.

    ``f`` must come from the ratio estimator with its parameters frozen but the gradient flowing through
    its input; the gradient of this loss is then the pathwise gradient of the f-divergence.
    """
    h = divergence.weight(f.detach())
    return (weight * h * f).mean()


def edm_loss_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 of EDM."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def denoising_loss(denoised: Tensor, clean: Tensor, sigma: Tensor, sigma_data: float) -> Tensor:
    """EDM denoising score matching: mean of lambda(sigma) * ||D(x + sigma eps) - x||^2 per element."""
    per_sample = ((denoised - clean) ** 2).flatten(1).mean(1)
    return (edm_loss_weight(sigma, sigma_data) * per_sample).mean()


def accuracy(logits_fake: Tensor, logits_real: Tensor) -> Tensor:
    """Classification accuracy of the ratio estimator (0.5 = cannot tell generated from real)."""
    return 0.5 * ((logits_fake > 0).float().mean() + (logits_real < 0).float().mean())


__all__ = ["Weighting", "apply_weighting", "ratio_loss", "generator_loss", "edm_loss_weight", "denoising_loss",
           "accuracy"]
