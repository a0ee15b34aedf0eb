"""How well a trained ratio estimator knows the log ratio that SIR uses, measured on 2-D data.

SIR weights a candidate ``y = x + sigma_v eps`` by ``exp(-f(y, sigma_v))``, where ``f`` estimates
``log q_sigma(y) - log p_sigma(y)``. What SIR can correct is the spread of the true log ratio over the
candidates; what it adds is the estimator's error. Both are measured here against a reference:

- ``log p_sigma`` exactly, from the data's Gaussian mixture noised to ``sigma``;
- ``log q_sigma`` as a Gaussian-kernel estimate over ``M`` fresh generator samples, ``logsumexp_i log N(y;
  g_i, sigma^2 I) - log M``, which is the generator's own noised density up to Monte Carlo noise. That noise
  is reported too (two independent ``M``-sample estimates), so that a small ``sigma_v`` whose reference is
  mostly kernel noise is visible as such.

A constant offset in ``f`` does not change SIR's weights after normalisation, so errors are measured
after removing the mean over candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffratio.analytic import GaussianMixture

#: draws generator samples ``(latents, labels) -> samples``
Generate = Callable[[Tensor, "Tensor | None"], Tensor]
#: the estimator ``(noised x, sigma per row, labels) -> f``
Estimator = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


@dataclass(frozen=True)
class Calibration:
    """Agreement of an estimated log ratio with a reference one over the same candidates.

    ``signal_std``: standard deviation of the reference log ratio (what SIR can use); ``error_rmse``:
    root-mean-square of the estimate minus the reference, both centred; ``correlation``: Pearson
    correlation of the two; ``kde_noise_rmse``: the reference's own noise (NaN when not measured)."""

    signal_std: float
    error_rmse: float
    correlation: float
    kde_noise_rmse: float = math.nan

    @property
    def error_over_signal(self) -> float:
        return self.error_rmse / self.signal_std if self.signal_std > 0 else math.inf


def centred(x: Tensor) -> Tensor:
    x = x.double().reshape(-1)
    return x - x.mean()


def calibration_stats(estimate: Tensor, truth: Tensor) -> Calibration:
    """Signal spread, offset-free error and correlation of ``estimate`` against ``truth`` (one value each per
    candidate). The mean offset is removed first: SIR's normalised weights do not see it."""
    e, t = centred(estimate), centred(truth)
    signal = float(t.pow(2).mean().sqrt())
    error = float((e - t).pow(2).mean().sqrt())
    denom = float(e.norm() * t.norm())
    corr = float((e * t).sum()) / denom if denom > 0 else math.nan
    return Calibration(signal, error, corr)


def kde_log_density(y: Tensor, centres: Tensor, sigma: float, chunk: int = 256) -> Tensor:
    """``log (1/M) sum_i N(y; centres_i, sigma^2 I)`` for every row of ``y`` (float64, chunked over rows):
    the density of the empirical distribution of ``centres`` noised to ``sigma``."""
    y, c = y.double(), centres.double()
    m, d = c.shape
    const = -0.5 * d * math.log(2 * math.pi * sigma**2) - math.log(m)
    out = [torch.logsumexp(-0.5 * torch.cdist(y[i:i + chunk], c).pow(2) / sigma**2, dim=1) + const
           for i in range(0, y.shape[0], chunk)]
    return torch.cat(out)


@torch.no_grad()
def calibrate(generate: Generate, estimator: Estimator, data: GaussianMixture, sigma: float, *, num: int,
              m: int, seed: int = 0) -> Calibration:
    """Score ``num`` generator candidates noised to ``sigma`` (as SIR does) with ``estimator`` and compare with
    the reference log ratio: a kernel estimate of ``log q_sigma`` over ``m`` fresh generator samples minus the
    exact ``log p_sigma`` of ``data``. A second, independent ``m``-sample estimate gives the reference's
    noise: the RMS of the centred difference of the two, over sqrt 2 (the noise of one estimate)."""
    g = torch.Generator().manual_seed(seed)
    x = generate(torch.randn(num, 2, generator=g), None)
    y = x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)
    f = estimator(y, torch.full((num,), sigma, dtype=y.dtype), None)
    log_p = data.log_prob(y.double(), sigma)
    log_q = [kde_log_density(y, generate(torch.randn(m, 2, generator=g), None), sigma) for _ in range(2)]
    stats = calibration_stats(f, log_q[0] - log_p)
    noise = float((centred(log_q[0]) - centred(log_q[1])).pow(2).mean().sqrt()) / math.sqrt(2)
    return Calibration(stats.signal_std, stats.error_rmse, stats.correlation, noise)


def calibration_header(m: int, num: int) -> str:
    """Title and column header of the calibration table (``m`` kernel centres, ``num`` candidates)."""
    return (f"\n### Ratio estimator against the reference log ratio (log q_sigma: kernel estimate over M = {m} "
            f"generator samples; log p_sigma: exact; {num} candidates noised to sigma_v; centred)\n\n"
            "| run | generator | sigma_v | signal std | error RMSE | error/signal | correlation | KDE noise RMSE |\n"
            "|---|---|---|---|---|---|---|---|")


def calibration_row(run: str, generator: str, sigma: float, c: Calibration) -> str:
    return (f"| {run} | {generator} | {sigma:g} | {c.signal_std:.3f} | {c.error_rmse:.3f} | "
            f"{c.error_over_signal:.2f} | {c.correlation:.3f} | {c.kde_noise_rmse:.3f} |")
