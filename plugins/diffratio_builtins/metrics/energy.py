"""Energy distance between generated samples and held-out data, with its two-sample floor."""

from __future__ import annotations

import warnings

import attrs

from diffratio import EvalContext, Metric
from diffratio.analytic import energy_distance, energy_floor
from diffratio.config import setting


class EnergyDistance(Metric):
    """``energy_distance`` (generated vs held-out data) and ``floor`` (two independent data samples).

    Both are V-statistics at ``num_samples`` points, so the floor is what a perfect generator gets on
    average at this sample size and ``ratio = energy_distance / floor`` near 1 means indistinguishable from
    data. One draw of either is noisy, so ``energy_distance`` is the mean over ``repeats`` generated sets,
    each against its own disjoint held-out set, and ``floor`` is the statistic's expected value for two data
    samples, 2 E|X-X'| / n (``analytic.energy_floor``), with E|X-X'| read from the cross distances of the
    disjoint held-out pairs. ``floor_sampled`` is the mean of those pairs' own statistics, ``floor_min`` and
    ``floor_max`` their spread.

    Each draw needs ``2 * num_samples`` held-out points of its own. A data set with fewer than
    ``2 * num_samples * repeats`` gives fewer draws: the metric then warns once and reports the draws it
    used as ``repeats``.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        num_samples: int = setting(2000, "generated points per draw; each draw also takes 2x held-out points", ge=10)
        repeats: int = setting(20, "draws averaged; fewer when the held-out set is too small (warned, logged)", ge=1)

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        self._warned = False

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        n, asked = self.config.num_samples, self.config.repeats
        ref = ctx.dataset.reference(2 * n * asked)
        repeats = min(asked, len(ref) // (2 * n))
        if repeats < 1:
            raise ValueError(f"metric energy-distance needs {2 * n} reference points per draw, the data set gives "
                             f"{len(ref)}; lower metrics.energy-distance.num_samples to at most {len(ref) // 2}")
        if repeats < asked and not self._warned:
            self._warned = True
            warnings.warn(f"metric energy-distance: metrics.energy-distance.repeats = {asked} needs "
                          f"{2 * n * asked} held-out points, the data set gives {len(ref)}; averaging {repeats} "
                          f"draws (logged as energy-distance/repeats). Lower repeats or num_samples to silence "
                          "this.", stacklevel=2)
        pairs = [(ref[2 * i * n:(2 * i + 1) * n], ref[(2 * i + 1) * n:(2 * i + 2) * n]) for i in range(repeats)]
        ed = sum(energy_distance(ctx.sample(n), a) for a, _ in pairs) / repeats
        floor = energy_floor(pairs)
        sampled = [energy_distance(a, b) for a, b in pairs]
        return {"energy_distance": ed, "floor": floor, "ratio": ed / floor, "floor_sampled": sum(sampled) / repeats,
                "floor_min": min(sampled), "floor_max": max(sampled), "repeats": float(repeats)}
