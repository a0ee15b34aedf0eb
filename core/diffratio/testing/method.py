"""Conformance of methods, and ``make_recipe``, the tiny CPU run they are checked on."""

from __future__ import annotations

import io
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from diffratio.kinds import KINDS
from diffratio.method import Method
from diffratio.testing._shared import Reporter, check_config, check_stored_config, names_component, seeded
from diffratio.testing.backbone import TinyBackbone
from diffratio.testing.dataset import GaussianPoints


def make_recipe(method: type, config: Any = None, *, components: Mapping[str, tuple[type, Any]] | None = None,
                steps: int = 2, batch_size: int = 8, seed: int = 0, registry: Any = None) -> Any:
    """A resolved ``Recipe`` of a tiny CPU run of ``method``: ``GaussianPoints`` data, a ``TinyBackbone``,
    and for the other tables the recipe defaults (edm generator, classifier ratio, dijs, lognormal,
    single device on CPU) from the registry; ``components`` replaces tables: ``{"dataset": (cls, config)}``.
    """
    from diffratio.recipe import SINGLE_TABLES, Recipe, Resolved, RunSettings, converter
    from diffratio.registry import default_registry

    reg = registry or default_registry()
    tables: dict[str, tuple[type, Any]] = {
        "dataset": (GaussianPoints, GaussianPoints.Config()),
        "backbone": (TinyBackbone, TinyBackbone.Config()),
    }
    for table in ("generator", "ratio", "divergence", "schedule", "strategy"):
        cls = reg.get(table, SINGLE_TABLES[table]).cls
        data = {"device": "cpu"} if table == "strategy" else {}
        tables[table] = (cls, converter.structure(data, cls.Config))
    tables.update(components or {})
    needed = ("dataset", "strategy", *getattr(method, "uses", ()))
    resolved = {"method": Resolved(kind="method", name=method.__dict__.get("registered_name") or method.__name__,
                                   cls=method, config=config if config is not None else method.Config())}
    for table in needed:
        cls, cfg = tables[table]
        resolved[table] = Resolved(kind=table, name=cls.__dict__.get("registered_name") or cls.__name__, cls=cls,
                                   config=cfg)
    settings = RunSettings(name="conformance", steps=steps, batch_size=batch_size, seed=seed, log_every=1,
                           checkpoint_every=steps, eval_every=0, sample_every=0, min_free_disk_gb=0.0)
    return Recipe(settings=settings, components=resolved, metrics={}, loggers={}, text="", sets=(),
                  source="<diffratio.testing>")


def _scalars(rep: Reporter, values: Any, where: str) -> dict[str, float]:
    rep.require(isinstance(values, dict), f"{where} must return a dict of scalars, got {type(values).__name__}")
    out = {}
    for k, v in values.items():
        rep.require(isinstance(k, str) and k, f"{where}: scalar names must be non-empty strings, got {k!r}")
        if torch.is_tensor(v):
            rep.require(v.numel() == 1, f"{where}: {k!r} must be a 0-d tensor or a float, got shape {tuple(v.shape)}")
            v = float(v)
        rep.require(isinstance(v, (int, float)) and math.isfinite(v), f"{where}: {k!r} = {v!r} is not finite")
        out[k] = float(v)
    return out


@names_component("method")
def check_method(cls: type, config: Any = None, *, components: Mapping[str, tuple[type, Any]] | None = None,
                 steps: int = 2, batch_size: int = 8, run_dir: str | Path | None = None, registry: Any = None) -> None:
    """A tiny run (``make_recipe``): finite step scalars, the same under the same seed; samples of the data
    shape; the state dict survives ``torch.load(weights_only=True)`` (as checkpoints are read) and a
    differently seeded run that loads it (and the data sampler's state) continues exactly."""
    from diffratio.engine import build_run
    from diffratio.registry import default_registry

    rep = Reporter("method", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, Method), "must derive from diffratio.Method")
    config = check_config(cls, config, kind="method")
    unknown = [t for t in getattr(cls, "uses", ()) if t not in KINDS]
    rep.require(not unknown, f"uses names unknown tables {unknown}")
    reg = registry or default_registry()
    with tempfile.TemporaryDirectory() as tmp, seeded(0):
        where = Path(run_dir or tmp)

        def build(seed: int) -> Any:
            return build_run(make_recipe(cls, config, components=components, steps=steps, batch_size=batch_size,
                                         seed=seed, registry=reg), where, reg)

        runs = [build(0), build(0)]
        check_stored_config(rep, runs[0].method, config)
        history: list[list[dict[str, float]]] = [[], []]
        for run, hist in zip(runs, history, strict=True):
            torch.manual_seed(10)
            for step in range(steps):
                hist.append(_scalars(rep, run.method.train_step(step), f"train_step({step})"))
        rep.require(history[0] == history[1], lambda: f"two runs under the same seed differ: {history[0]} vs "
                                                      f"{history[1]}")
        method = runs[0].method
        data_shape = runs[0].ctx.data_shape
        torch.manual_seed(11)
        samples = method.sample(5)
        rep.shape(samples, (5, *data_shape), "sample(5)")
        rep.finite(samples, "sample(5)")
        counts = method.parameter_counts()
        rep.require(isinstance(counts, dict) and all(isinstance(v, int) for v in counts.values()),
                    f"parameter_counts must map names to ints, got {counts!r}")
        per_step = method.images_per_step()
        rep.require(isinstance(per_step, int) and per_step > 0, f"images_per_step must be an int > 0, got {per_step!r}")

        buffer = io.BytesIO()
        torch.save(method.state_dict(), buffer)
        buffer.seek(0)
        try:
            state = torch.load(buffer, weights_only=True)
        except Exception as exc:
            rep.fail(f"state_dict() cannot be read back with torch.load(weights_only=True), as checkpoints are: "
                     f"{type(exc).__name__}: {exc}")
        resumed = build(1)
        resumed.method.load_state_dict(state)
        resumed.ctx.sampler.load_state_dict(runs[0].ctx.sampler.state_dict())
        after = []
        for run in (runs[0], resumed):
            torch.manual_seed(12)
            values = _scalars(rep, run.method.train_step(steps), f"train_step({steps})")
            torch.manual_seed(13)
            after.append((values, run.method.sample(5)))
        rep.require(after[0][0] == after[1][0], lambda: f"a run rebuilt from state_dict() continues differently: "
                                                        f"{after[0][0]} vs {after[1][0]}")
        rep.require(torch.equal(after[0][1], after[1][1]), "a run rebuilt from state_dict() samples differently")


