"""A trained run's inference networks, built from its config and weights alone.

``load_sampler`` rebuilds what ``dr-sample``, the verifier and exports need (``Method.build_sampler``) from a
run directory's config and checkpoint or from a single-file export: no optimiser is built and the training
data are not loaded (a data set is built only where its own methods are needed: ``InferenceContext.dataset``).
``load_pretrained_denoiser`` gives the denoiser a pretraining run offers for ``method.init``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from diffratio import checkpoint as ckpt
from diffratio.components import Backbone, Dataset, Generator, RatioEstimator, Strategy
from diffratio.edm import EDMDenoiser
from diffratio.errors import CheckpointError, DiffRatioError
from diffratio.method import DataInfo, Method, Sampler
from diffratio.recipe import Recipe, Resolved, resolve_recipe
from diffratio.registry import Registry, default_registry

#: ``format`` tag of the single-file export (bump when its keys change meaning)
EXPORT_FORMAT = "diffratio-export/2"


class InferenceContext:
    """What ``Method.build_sampler`` may use: the recipe's component tables, the data's description, the
    strategy (device, autocast) and the builders of ``RunContext`` (same names, same networks)."""

    def __init__(self, recipe: Recipe, data: DataInfo, strategy: Strategy, *,
                 dataset: Callable[[], Dataset] | None = None) -> None:
        self.recipe = recipe
        self.data = data
        self.strategy = strategy
        self._make_dataset = dataset
        self._dataset: Dataset | None = None

    @property
    def device(self) -> torch.device:
        return self.strategy.device

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.data.data_shape

    @property
    def num_labels(self) -> int:
        return self.data.num_labels

    @property
    def dataset(self) -> Dataset:
        """The run's data set, built (on the CPU) on first use: for ``to_image`` and ``reference`` only."""
        if self._dataset is None:
            if self._make_dataset is None:
                raise DiffRatioError("this inference context has no data set")
            self._dataset = self._make_dataset()
        return self._dataset

    def component(self, table: str) -> Resolved:
        return self.recipe.components[table]

    def build_backbone(self, mode: str = "full") -> Backbone:
        c = self.component("backbone")
        return c.cls(c.config, data_shape=self.data_shape, num_labels=self.num_labels, mode=mode)

    def build_denoiser(self) -> EDMDenoiser:
        return EDMDenoiser(self.build_backbone("full"), sigma_data=self.data.sigma_data)

    def build_generator(self) -> Generator:
        c = self.component("generator")
        return c.cls(c.config, denoiser=self.build_denoiser())

    def build_ratio(self) -> RatioEstimator:
        c = self.component("ratio")
        return c.cls(c.config, backbone=self.build_backbone("encoder"), sigma_data=self.data.sigma_data)


@attrs.define
class Loaded:
    """A trained run's sampler, the context it was built in, and the step and training time of its weights."""

    sampler: Sampler
    ctx: InferenceContext
    method: type[Method]
    config: dict[str, Any]
    step: int
    train_seconds: float = 0.0


def _recipe(config: dict[str, Any], text: str, source: str, registry: Registry) -> Recipe:
    """The run's resolved recipe with a ``single`` strategy (a run trained by several processes samples in
    one: its checkpoints hold full weights) and no loggers."""
    recipe = resolve_recipe(config, registry=registry, text=text, source=source)
    strategy = recipe.components["strategy"]
    if strategy.name != "single":
        single = registry.get("strategy", "single").cls
        keep = {k: getattr(strategy.config, k) for k in ("device", "precision") if hasattr(strategy.config, k)}
        recipe.components["strategy"] = Resolved(kind="strategy", name="single", cls=single,
                                                 config=single.Config(**keep))
    return attrs.evolve(recipe, loggers={})


def build_sampler(config: dict[str, Any], text: str, source: str, weights: Mapping[str, Mapping[str, Tensor]],
                  data: DataInfo | None, *, step: int, train_seconds: float = 0.0,
                  registry: Registry | None = None) -> Loaded:
    """The sampler of a run with resolved ``config`` (run.json's), loaded with ``weights``. ``data`` None (a
    checkpoint written before methods recorded it) builds the data set once to describe it."""
    registry = registry or default_registry()
    recipe = _recipe(config, text, source, registry)
    comps = recipe.components
    strategy: Strategy = comps["strategy"].cls(comps["strategy"].config)

    def dataset() -> Dataset:
        return comps["dataset"].cls(comps["dataset"].config)

    if data is None:
        ds = dataset()
        data = DataInfo(tuple(ds.data_shape), ds.num_labels, float(ds.sigma_data))
    ctx = InferenceContext(recipe, data, strategy, dataset=dataset)
    method: type[Method] = comps["method"].cls
    sampler = method.build_sampler(comps["method"].config, ctx=ctx)
    for net in sampler.networks().values():
        net.to(ctx.device).eval().requires_grad_(False)
    sampler.load({k: {n: t.to(ctx.device) for n, t in v.items()} for k, v in weights.items()})
    return Loaded(sampler, ctx, method, config, step, train_seconds)


def _run_json(run_dir: Path) -> dict[str, Any]:
    info_path = run_dir / "run.json"
    if not info_path.exists():
        raise DiffRatioError(f"{run_dir} is not a run directory (no run.json); give the folder dr-train wrote "
                             "or a file written by dr-sample --export")
    return json.loads(info_path.read_text())


def _checkpoint_of(run_dir: Path, step: int | None) -> Path:
    if step is None:
        chosen = ckpt.find_latest(run_dir / "checkpoints")
        if chosen is None:
            raise DiffRatioError(f"{run_dir} has no checkpoint yet; train first (dr-train ...)")
        return chosen
    steps = {int(p.name): p for p in ckpt.list_checkpoints(run_dir / "checkpoints")}
    if step not in steps:
        raise DiffRatioError(f"{run_dir} has no checkpoint of step {step}; it has steps {sorted(steps) or 'none'} "
                             "(run.keep_checkpoints = 0 keeps every one)")
    problem = ckpt.verify_checkpoint(steps[step])
    if problem:
        raise DiffRatioError(f"checkpoint {steps[step]} is damaged: {problem}")
    return steps[step]


def _method_class(config: Mapping[str, Any], registry: Registry) -> type[Method]:
    return registry.get("method", config["method"]["name"]).cls


def read_export(path: Path) -> dict[str, Any]:
    """The contents of a file written by ``export_sampler``; a clear error for any other file."""
    state = ckpt.load_state(path)
    if isinstance(state, dict) and state.get("format") == "diffratio-export/1":
        raise DiffRatioError(f"{path} is an export in the older format diffratio-export/1; export the run again "
                             "with `dr-sample RUN_DIR --export FILE.pt`")
    if not isinstance(state, dict) or state.get("format") != EXPORT_FORMAT:
        raise DiffRatioError(f"{path} is not a diffratio export (format {EXPORT_FORMAT!r}); write one with "
                             "`dr-sample RUN_DIR --export FILE.pt`, or give a run directory")
    return state


def load_sampler(path: str | Path, registry: Registry | None = None, *, step: int | None = None) -> Loaded:
    """The sampler of a run directory (its latest checkpoint, or the one of ``step``) or of an export file."""
    path, registry = Path(path), registry or default_registry()
    if path.is_file():
        if step is not None:
            raise DiffRatioError(f"{path} is an export of one step; step={step} needs a run directory")
        state = read_export(path)
        data = DataInfo(tuple(state["data"]["data_shape"]), int(state["data"]["num_labels"]),
                        float(state["data"]["sigma_data"]))
        return build_sampler(state["config"], state.get("recipe_text", ""), str(path), state["weights"], data,
                             step=int(state["step"]), registry=registry)
    info = _run_json(path)
    chosen = _checkpoint_of(path, step)
    state = ckpt.load_state(chosen)
    method = _method_class(info["config"], registry)
    return build_sampler(info["config"], info.get("recipe_text", ""), str(path / "run.json"),
                         method.inference_weights(state["method"]), method.inference_data(state["method"]),
                         step=int(state["step"]), train_seconds=float(state.get("train_seconds", 0.0)),
                         registry=registry)


def export_sampler(loaded: Loaded, recipe_text: str = "") -> dict[str, Any]:
    """The single-file export of a loaded run: its config, data description, step and inference weights."""
    d = loaded.ctx.data
    return {"format": EXPORT_FORMAT, "config": loaded.config, "recipe_text": recipe_text, "step": loaded.step,
            "data": {"data_shape": list(d.data_shape), "num_labels": d.num_labels, "sigma_data": d.sigma_data},
            "weights": loaded.sampler.export()}


def load_pretrained_denoiser(path: str | Path, registry: Registry | None = None) -> dict[str, Tensor]:
    """The denoiser weights a pretraining run offers (``Method.pretrained_denoiser``), for ``method.init``.

    ``path`` is a run directory, one of its checkpoints, or an export file of such a run.
    """
    registry = registry or default_registry()
    found = ckpt.resolve_checkpoint(path)
    if found.is_file():
        state = read_export(found)
        config, weights = state["config"], state["weights"]
    else:
        run_json = found.parent.parent / "run.json"
        if not run_json.exists():
            raise CheckpointError(f"{found} is not inside a run directory (no {run_json}); give the run "
                                  "directory of a pretraining run")
        config = json.loads(run_json.read_text())["config"]
        method_state = ckpt.load_state(found)["method"]
        weights = _method_class(config, registry).inference_weights(method_state)
    denoiser = _method_class(config, registry).pretrained_denoiser(weights)
    if denoiser is None:
        raise CheckpointError(f"{path} is a run of method {config['method']['name']!r}, which trains no diffusion "
                              "denoiser; initialise from the run directory of an `edm` pretraining recipe")
    return denoiser


__all__ = ["EXPORT_FORMAT", "InferenceContext", "Loaded", "build_sampler", "export_sampler",
           "load_pretrained_denoiser", "load_sampler", "read_export"]
