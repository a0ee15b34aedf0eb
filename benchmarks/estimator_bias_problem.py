"""The 2-D problem of ``estimator_bias.py``: data, generators, networks and the sample streams they share.

Data p and generators q are analytic Gaussian mixtures (``diffratio.analytic``), so the score difference
the estimators target is known exactly. Every estimator of one seed draws the same samples, noise levels
and noise from the streams here, so that the comparison isolates the estimators themselves.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from diffratio import OptimizerConfig, count_parameters
from diffratio.analytic import GaussianMixture, ring
from diffratio.edm import EDMDenoiser
from diffratio_builtins.backbones.mlp import MLPBackbone
from diffratio_builtins.models import ClassifierRatio
from diffratio_builtins.schedules import LogNormal

# ---- the problem ------------------------------------------------------------------------------------

P = ring(8, 2.0, 0.15)  # data


def _rotated_ring(angle: float, radius: float, std: float, tilt: float) -> GaussianMixture:
    """Eight modes on a circle turned by ``angle``, with weights tilted towards angle 0 by ``tilt``."""
    a = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8) + angle
    means = radius * torch.stack([a.cos(), a.sin()], 1)
    return GaussianMixture(means, torch.full((8,), std**2), 1 + tilt * a.cos())


GENERATORS = {
    # an early generator: three blobs inside the ring, one anisotropic
    "far": GaussianMixture(
        torch.tensor([[-0.8, -0.4], [0.7, 0.6], [0.2, -1.1]]),
        torch.tensor([[[0.09, 0.0], [0.0, 0.09]], [[0.16, 0.06], [0.06, 0.06]], [[0.05, 0.0], [0.0, 0.05]]]),
        torch.tensor([0.5, 0.3, 0.2]),
    ),
    # a nearly converged generator: the ring slightly rotated, shrunk and widened, uneven mode weights
    "close": _rotated_ring(0.06, 1.95, 0.18, 0.3),
}
SIGMA_DATA = P.std()
SCHEDULE = LogNormal(LogNormal.Config(p_mean=-1.0, p_std=1.4))  # the toy2d recipes' sigma distribution
EVAL_SIGMAS = [round(float(s), 4) for s in torch.logspace(math.log10(0.02), math.log10(5.0), 10)]
N_EVAL = 2000
BATCH = 256
N_FINITE = 200  # size of the finite data set of the "finite" scenario
OPTIMIZER = OptimizerConfig(lr=1e-3, betas=(0.9, 0.999))
NET = MLPBackbone.Config(hidden=64, depth=2, embed_dim=32)

#: classifier variants: ClassifierRatio.Config options and the weighting lambda(sigma) of the logistic loss
#: (diffratio.losses.apply_weighting with sigma_data = SIGMA_DATA; "snr" = sigma^2 / (sigma^2 + sigma_data^2))
PLAIN = {"ratio": {}, "weighting": "one"}
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": PLAIN,
    "inv_sigma": {"ratio": {"output_scale": "inv_sigma"}, "weighting": "one"},
    "inv_sigma2": {"ratio": {"output_scale": "inv_sigma2"}, "weighting": "one"},
    "inv_sigma2+snr": {"ratio": {"output_scale": "inv_sigma2"}, "weighting": "snr"},
    "energy": {"ratio": {"logit_form": "energy"}, "weighting": "one"},
    "energy+snr": {"ratio": {"logit_form": "energy"}, "weighting": "snr"},
    "energy+sigma2": {"ratio": {"logit_form": "energy"}, "weighting": "sigma2"},
    "plain+head64": {"ratio": {"head_hidden": 64}, "weighting": "one"},
    "inv_sigma+head64": {"ratio": {"output_scale": "inv_sigma", "head_hidden": 64}, "weighting": "one"},
    "energy+head64": {"ratio": {"logit_form": "energy", "head_hidden": 64}, "weighting": "one"},
    "plain+snr": {"ratio": {}, "weighting": "snr"},
    "plain+edm": {"ratio": {}, "weighting": "edm"},
    "inv_sigma+snr": {"ratio": {"output_scale": "inv_sigma"}, "weighting": "snr"},
    "inv_sigma+sigma2": {"ratio": {"output_scale": "inv_sigma"}, "weighting": "sigma2"},
}


# ---- networks ---------------------------------------------------------------------------------------


def score_net(cfg: MLPBackbone.Config = NET) -> EDMDenoiser:
    """An EDM denoiser on an MLP: VSD's teacher and fake score networks."""
    return EDMDenoiser(MLPBackbone(cfg, data_shape=(2,), mode="full"), sigma_data=SIGMA_DATA)


def classifier(variant: dict[str, Any], cfg: MLPBackbone.Config = NET) -> ClassifierRatio:
    """DiffRatio's time-conditional classifier of the given variant on an MLP encoder."""
    return ClassifierRatio(
        ClassifierRatio.Config(**variant["ratio"]),
        backbone=MLPBackbone(cfg, data_shape=(2,), mode="encoder"),
        sigma_data=SIGMA_DATA,
    )


@functools.cache
def equal_total_config(name: str) -> MLPBackbone.Config:
    """The backbone width whose classifier (variant ``name``) has as many parameters as two score networks."""
    target = 2 * count_parameters(score_net())
    lo, hi = NET.hidden, 4 * NET.hidden  # parameters grow with the width: bisect, then pick the closer
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_parameters(classifier(VARIANTS[name], _with_hidden(mid))) < target:
            lo = mid
        else:
            hi = mid
    return _with_hidden(
        min((lo, hi), key=lambda h: abs(count_parameters(classifier(VARIANTS[name], _with_hidden(h))) - target))
    )


def _with_hidden(h: int) -> MLPBackbone.Config:
    """``NET`` with another width."""
    return MLPBackbone.Config(hidden=h, depth=NET.depth, embed_dim=NET.embed_dim)


# ---- sample streams: identical for every estimator of a seed ------------------------------------------


def finite_data(seed: int) -> Tensor:
    """The finite data set of the "finite" scenario for ``seed``, shared by the teacher and the classifier."""
    return P.sample(N_FINITE, torch.Generator().manual_seed(50_000 + seed)).float()


def stream(mix: GaussianMixture | None, data: Tensor | None, seed: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Batches ``(x, sigma, x_sigma)`` from a mixture (fresh samples) or a finite data set, from ``seed``.

    sigma is drawn from SCHEDULE's log-normal with this stream's own generator, so that the teacher,
    the fake score and the classifier of one seed see exactly the same samples, noise levels and noise.
    """
    g = torch.Generator().manual_seed(seed)
    c = SCHEDULE.config
    while True:
        if data is not None:
            x = data[torch.randint(len(data), (BATCH,), generator=g)]
        else:
            assert mix is not None
            x = mix.sample(BATCH, g).float()
        sigma = torch.exp(c.p_mean + c.p_std * torch.randn(BATCH, generator=g)).clamp(c.sigma_min, c.sigma_max)
        yield x, sigma, x + sigma[:, None] * torch.randn(BATCH, 2, generator=g)


def p_stream(seed: int, data: str) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Noised data batches for ``seed``: fresh samples of P, or the finite data set when ``data`` is "finite"."""
    return stream(None, finite_data(seed), 1000 + seed) if data == "finite" else stream(P, None, 1000 + seed)


def q_stream(seed: int, gen: str) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Noised batches of generator ``gen`` for ``seed``."""
    return stream(GENERATORS[gen], None, 2000 + seed)
