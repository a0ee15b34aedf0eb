"""Improved precision and recall (Kynkaanniemi et al. 2019): k-NN manifold estimates in a feature space."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffratio.fid.features import exact_fp32


def _pairwise_dist(a: Tensor, b: Tensor) -> Tensor:
    return torch.cdist(a.unsqueeze(0), b.unsqueeze(0)).squeeze(0)


def knn_radii(feats: Tensor, k: int, batch_size: int = 1024) -> Tensor:
    """Distance of every point to its ``k``-th nearest neighbour in the same set (itself excluded)."""
    n = feats.shape[0]
    if n <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} points, got {n}")
    out = []
    for i in range(0, n, batch_size):
        d = _pairwise_dist(feats[i: i + batch_size], feats)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the smallest is the point itself (distance ~0)
    return torch.cat(out)


def manifold_coverage(queries: Tensor, points: Tensor, radii: Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``queries`` inside at least one ball ``|q - p| <= r_p`` around ``points``."""
    inside = 0
    for i in range(0, queries.shape[0], batch_size):
        d = _pairwise_dist(queries[i: i + batch_size], points)
        inside += int((d <= radii.unsqueeze(0)).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(real: np.ndarray | Tensor, fake: np.ndarray | Tensor, *, k: int = 3, batch_size: int = 1024,
                     device: str | torch.device = "cpu") -> tuple[float, float]:
    """Precision and recall of ``fake`` against ``real`` features.

    Precision: the fraction of generated points within the k-NN ball of some real point; recall: the
    fraction of real points within the k-NN ball of some generated point. Distances in fp32, batched.
    """
    r = torch.as_tensor(np.asarray(real), dtype=torch.float32, device=device)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float32, device=device)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(r.shape)} and {tuple(f.shape)}")
    with exact_fp32():
        precision = manifold_coverage(f, r, knn_radii(r, k, batch_size), batch_size)
        recall = manifold_coverage(r, f, knn_radii(f, k, batch_size), batch_size)
    return precision, recall


__all__ = ["knn_radii", "manifold_coverage", "precision_recall"]
