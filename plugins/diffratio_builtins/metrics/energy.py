"""Energy distance between generated samples and held-out data, with its two-sample floor."""

from __future__ import annotations

import attrs

from diffratio import EvalContext, Metric
from diffratio.analytic import energy_distance


class EnergyDistance(Metric):
    """``energy_distance`` (generated vs held-out data) and ``floor`` (two independent data samples).

    Both use the V-statistic, so the floor is the value a perfect generator would typically get at this
    sample size; ``ratio = energy_distance / floor`` near 1 means indistinguishable from data.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        num_samples: int = attrs.field(default=2000, validator=attrs.validators.ge(10))  # generated points; data: 2x

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        n = self.config.num_samples
        ref = ctx.dataset.reference(2 * n)
        if len(ref) < 2 * n:
            raise ValueError(f"energy distance needs {2 * n} reference points, the data set gives {len(ref)}")
        gen = ctx.sample(n)
        ed = energy_distance(gen, ref[:n])
        floor = energy_distance(ref[:n], ref[n:])
        return {"energy_distance": ed, "floor": floor, "ratio": ed / floor}
