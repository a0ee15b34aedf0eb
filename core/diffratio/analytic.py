"""Gaussian mixtures with exact noised densities: ground truth for the 2-D checks.

A mixture convolved with N(0, sigma^2 I) is again a mixture (each covariance plus sigma^2 I), so the
log density and the score of ``p_sigma`` are exact at every noise level (docs/concepts.md section 8).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class GaussianMixture:
    """``sum_k w_k N(mu_k, Sigma_k)`` in d dimensions, float64 throughout.

    ``covs`` may be (K,) isotropic variances or (K, d, d) full covariances.
    """

    def __init__(self, means: Tensor, covs: Tensor, weights: Tensor | None = None) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)
        k, d = self.means.shape
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.ndim == 1:
            covs = covs[:, None, None] * torch.eye(d, dtype=torch.float64)
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must be (K,) or (K, d, d) with K={k}, d={d}; got {tuple(covs.shape)}")
        self.covs = covs
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(
            weights, dtype=torch.float64)
        self.weights = w / w.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def noised(self, sigma: float) -> GaussianMixture:
        """The mixture convolved with N(0, sigma^2 I)."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.means, self.covs + sigma**2 * eye, self.weights)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covs)
        eps = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return self.means[comp] + torch.einsum("nij,nj->ni", chol[comp], eps)

    def _component_log_probs(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """log(w_k N(x; mu_k, Sigma_k + sigma^2 I)) for each sample and component: (N, K)."""
        x = x.to(torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
        eye = torch.eye(self.dim, dtype=torch.float64, device=x.device)
        cov = self.covs[None] + (sigma**2)[:, None, None, None] * eye  # (S, K, d, d), S = 1 or N
        diff = x[:, None, :] - self.means[None]  # (N, K, d)
        chol = torch.linalg.cholesky(cov)
        sol = torch.linalg.solve_triangular(chol, diff.unsqueeze(-1), upper=False).squeeze(-1)
        maha = (sol**2).sum(-1)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return self.weights.log()[None] - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """log p_sigma(x), exact. ``sigma`` is a scalar or one value per sample."""
        return torch.logsumexp(self._component_log_probs(x, sigma), dim=1)

    def score(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """grad_x log p_sigma(x), exact (closed form, no autograd)."""
        x = x.to(torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        resp = torch.softmax(self._component_log_probs(x, sigma), dim=1)  # (N, K)
        eye = torch.eye(self.dim, dtype=torch.float64)
        cov = self.covs[None] + (sigma**2)[:, None, None, None] * eye
        diff = (self.means[None] - x[:, None, :]).unsqueeze(-1)  # (N, K, d, 1)
        per = torch.linalg.solve(cov, diff).squeeze(-1)  # (N, K, d)
        return (resp.unsqueeze(-1) * per).sum(1)

    def std(self) -> float:
        """Overall standard deviation per coordinate (root of the mean variance)."""
        mean = (self.weights[:, None] * self.means).sum(0)
        second = (self.weights[:, None, None] * (self.covs + self.means[:, :, None] * self.means[:, None, :]))
        cov = second.sum(0) - mean[:, None] * mean[None, :]
        return float(torch.diagonal(cov).mean().sqrt())


def ring(components: int = 8, radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """Equal-weight isotropic Gaussians evenly spaced on a circle."""
    angle = torch.arange(components, dtype=torch.float64) * (2 * math.pi / components)
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return GaussianMixture(means, torch.full((components,), std**2))


def grid(side: int = 5, spacing: float = 1.0, std: float = 0.05) -> GaussianMixture:
    """Equal-weight isotropic Gaussians on a centred ``side x side`` grid."""
    coords = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    means = torch.cartesian_prod(coords, coords)
    return GaussianMixture(means, torch.full((side * side,), std**2))


def energy_distance(x: Tensor, y: Tensor) -> float:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (V-statistic: zero diagonal terms included).

    Being the biased estimate, two independent samples of one distribution give a small positive value
    of order 1/n: that is the floor a generator is compared with.
    """
    x = x.to(torch.float64).flatten(1)
    y = y.to(torch.float64).flatten(1)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def energy_floor(pairs: list[tuple[Tensor, Tensor]]) -> float:
    """Expected ``energy_distance`` between two independent n-point samples of one distribution: 2 E|X-X'| / n.

    The V-statistic's self terms average over n^2 entries of which n are zero, so for two samples of one
    distribution its expectation is ``2 E|X-X'| - 2 (n-1)/n E|X-X'| = 2 E|X-X'| / n``. ``E|X-X'|`` is read from
    the cross distances of the given independent pairs (all of size n), n^2 distances per pair: a far steadier
    estimate of the floor than the pairs' own statistics, which on the toy2d ring spread with a standard
    deviation of about 60% of their mean at n = 2000.
    """
    n = pairs[0][0].shape[0]
    mean_dist = sum(float(torch.cdist(a.to(torch.float64).flatten(1), b.to(torch.float64).flatten(1)).mean())
                    for a, b in pairs) / len(pairs)
    return 2 * mean_dist / n
