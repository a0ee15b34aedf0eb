"""The Frechet distance between two Gaussians, computed through symmetric eigen-decompositions (no
complex square roots, stable for the singular covariances of small sample sets)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _sym(a: Tensor) -> Tensor:
    return (a + a.T) * 0.5


def _numerical_zero(w: Tensor) -> Tensor:
    """Eigenvalues of a PSD matrix with those indistinguishable from 0 in float64 set to 0.

    The tolerance is that of ``numpy.linalg.matrix_rank``; without it the square roots of rounding noise
    add up over the null space of a singular covariance.
    """
    tol = max(float(w.max()) if w.numel() else 0.0, 0.0) * w.numel() * torch.finfo(torch.float64).eps
    return torch.where(w > tol, w, torch.zeros_like(w))


def psd_sqrt(a: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite float64 matrix."""
    w, v = torch.linalg.eigh(_sym(a))
    return (v * torch.sqrt(_numerical_zero(w))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *,
                     device: str | torch.device = "cpu") -> float:
    """``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` in float64.

    ``Tr (S1 S2)^(1/2)`` is the sum of square roots of the eigenvalues of ``S1^(1/2) S2 S1^(1/2)``, a
    symmetric PSD matrix with the same spectrum as ``S1 S2``; this avoids the complex, ill-conditioned
    ``sqrtm`` of a non-symmetric product and stays exact when the covariances are singular. The two
    eigen-decompositions run in torch on ``device`` (faster than NumPy's on a CPU, faster still on a GPU).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    t1, t2 = (torch.as_tensor(s, device=device) for s in (s1, s2))  # float64, as s1 and s2
    r1 = psd_sqrt(t1)
    eig = torch.linalg.eigvalsh(_sym(r1 @ t2 @ r1))
    tr_covmean = float(torch.sqrt(_numerical_zero(eig)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


__all__ = ["frechet_distance", "psd_sqrt"]
