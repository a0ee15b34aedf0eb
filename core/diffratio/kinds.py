"""Every component kind by its recipe-facing name: the registry's hooks and the conformance kit use it."""

from __future__ import annotations

from diffratio.components import (
    Backbone,
    Component,
    Dataset,
    Divergence,
    Generator,
    Logger,
    Metric,
    NoiseSchedule,
    RatioEstimator,
    Strategy,
)
from diffratio.method import Method

KINDS: dict[str, type[Component]] = {
    "backbone": Backbone,
    "generator": Generator,
    "ratio": RatioEstimator,
    "divergence": Divergence,
    "method": Method,
    "schedule": NoiseSchedule,
    "dataset": Dataset,
    "metric": Metric,
    "strategy": Strategy,
    "logger": Logger,
}
