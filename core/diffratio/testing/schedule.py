"""Conformance of noise schedules."""

from __future__ import annotations

from typing import Any

import torch

from diffratio.components import NoiseSchedule
from diffratio.testing._shared import Reporter, check_config, check_stored_config, names_component, seeded


@names_component("schedule")
def check_schedule(cls: type, config: Any = None, *, n: int = 512) -> None:
    """sigma > 0, finite, shape (n,), reproducible under a seed; ``noise`` keeps the shape and is finite."""
    rep = Reporter("schedule", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, NoiseSchedule), "must derive from diffratio.NoiseSchedule")
    config = check_config(cls, config, kind="schedule")
    sched = cls(config)
    check_stored_config(rep, sched, config)
    with seeded(0):
        sigma = sched.sample(n, "cpu")
    rep.shape(sigma, (n,), f"sample({n})")
    rep.finite(sigma, "sample()")
    rep.require(bool((sigma > 0).all()), lambda: f"sample() gave sigma <= 0: {sigma[sigma <= 0][:5].tolist()}")
    with seeded(0):
        again = sched.sample(n, "cpu")
    rep.require(torch.equal(sigma, again), "sample() differs under the same torch.manual_seed")
    x = torch.randn(8, 3)
    noised = sched.noise(x, sigma[:8])
    rep.shape(noised, x.shape, "noise(x, sigma)")
    rep.finite(noised, "noise(x, sigma)")


