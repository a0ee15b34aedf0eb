"""Conformance of metrics."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffratio.components import Dataset, EvalContext, Metric
from diffratio.testing._shared import Reporter, check_config, check_stored_config, names_component, seeded
from diffratio.testing.dataset import GaussianPoints


@names_component("metric")
def check_metric(cls: type, config: Any = None, *, dataset: Dataset | None = None,
                 sample: Callable[[int], Tensor] | None = None, run_dir: str | Path | None = None) -> None:
    """Finite values under string names, the same under the same seed and for a fresh instance.

    ``dataset`` defaults to ``GaussianPoints`` and ``sample`` to its reference points plus noise; image
    metrics need an image data set and a sampler of images in model units.
    """
    rep = Reporter("metric", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, Metric), "must derive from diffratio.Metric")
    config = check_config(cls, config, kind="metric")
    ds = dataset if dataset is not None else GaussianPoints()

    def default_sample(n: int) -> Tensor:
        return ds.reference(n) + 0.3 * torch.randn(n, *ds.data_shape)

    with tempfile.TemporaryDirectory() as tmp:
        ctx = EvalContext(sample=sample or default_sample, dataset=ds, device=torch.device("cpu"),
                          run_dir=str(run_dir or tmp), step=0)
        results = []
        for metric in (cls(config), cls(config)):
            check_stored_config(rep, metric, config)
            with seeded(0):
                results.append(metric.compute(ctx))
    first = results[0]
    rep.require(isinstance(first, dict) and first, f"compute() must return a non-empty dict, got {first!r}")
    for key, value in first.items():
        rep.require(isinstance(key, str) and key, f"result names must be non-empty strings, got {key!r}")
        rep.require(isinstance(value, (int, float)) and math.isfinite(float(value)),
                    f"result {key!r} must be a finite number, got {value!r}")
    rep.require(results[0] == results[1], f"compute() differs under the same seed: {results[0]} vs {results[1]}")


