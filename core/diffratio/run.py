"""A run's objects: the context a Method builds from, the live ``Run`` handed to hooks, and how both are built."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffratio.components import (
    Dataset,
    Divergence,
    Generator,
    Logger,
    Metric,
    NoiseSchedule,
    Strategy,
)
from diffratio.errors import DiffRatioError
from diffratio.guard import NonFiniteGuard
from diffratio.inference import InferenceContext
from diffratio.method import DataInfo, Method
from diffratio.recipe import Recipe, RunSettings
from diffratio.registry import Registry


class DataSampler:
    """Random batches of real data by index, from its own seeded generator (its state is checkpointed).

    The generator lives on the training device, so the indices are drawn there: no copy from host memory,
    which for pageable memory would wait for the device every step.
    """

    def __init__(self, dataset: Dataset, seed: int, device: torch.device) -> None:
        if len(dataset) == 0:
            raise DiffRatioError(f"data set {type(dataset).registered_name!r} is empty")
        self.dataset = dataset
        self.device = device
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def batch(self, n: int) -> tuple[Tensor, Tensor | None]:
        idx = torch.randint(len(self.dataset), (n,), generator=self.gen, device=self.device)
        return self.dataset.get(idx)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.gen.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.gen.set_state(state["rng"].cpu())


class RunContext(InferenceContext):
    """What a Method may use to build its models and draw data: the builders of ``InferenceContext`` over
    the run's own data set, the run settings, and the real-data sampler."""

    def __init__(self, recipe: Recipe, strategy: Strategy, dataset: Dataset, run_dir: Path,
                 registry: Registry) -> None:
        info = DataInfo(tuple(dataset.data_shape), dataset.num_labels, dataset.sigma_data)
        super().__init__(recipe, info, strategy, dataset=lambda: dataset)
        self.settings: RunSettings = recipe.settings
        self.run_dir = run_dir
        self.registry = registry
        self.sampler = DataSampler(dataset, recipe.settings.seed * 1000 + strategy.rank + 1, strategy.device)

    def build_divergence(self) -> Divergence:
        c = self.component("divergence")
        return c.cls(c.config)

    def build_schedule(self) -> NoiseSchedule:
        c = self.component("schedule")
        return c.cls(c.config)

    def real_batch(self, n: int) -> tuple[Tensor, Tensor | None]:
        """``n`` real samples (and labels) on the device."""
        return self.sampler.batch(n)

    def random_labels(self, n: int) -> Tensor | None:
        """Uniform class labels for generated samples, or None for unconditional data."""
        if self.num_labels == 0:
            return None
        return torch.randint(self.num_labels, (n,), device=self.device)

    def latents(self, generator: Generator, n: int) -> Tensor:
        return torch.randn(n, *generator.latent_shape(self.data_shape), device=self.device)


class Run:
    """A live run, handed to lifecycle hooks: context, method, loggers, metrics and the current step."""

    def __init__(self, ctx: RunContext, method: Method, loggers: list[Logger], metrics: dict[str, Metric]) -> None:
        self.ctx = ctx
        self.method = method
        self.loggers = loggers
        self.metrics = metrics
        self.step = 0
        self.train_seconds = 0.0  # wall time spent in training steps, summed over resumes
        self.guard = NonFiniteGuard(ctx.settings.max_nonfinite_steps)
        self.finished = False  # the final samples and evaluation are written (run.json records it)

    @property
    def run_dir(self) -> Path:
        return self.ctx.run_dir


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / recipe.settings.name


def build_strategy(recipe: Recipe) -> Strategy:
    """The recipe's strategy; distributed ones join their process group here."""
    comp = recipe.components["strategy"]
    return comp.cls(comp.config)


def build_run(recipe: Recipe, run_dir: Path, registry: Registry, strategy: Strategy | None = None, *,
              loggers: bool = True) -> Run:
    """Build data, method, metrics and (on the main rank, unless ``loggers`` is False) loggers, and the strategy
    unless given; no checkpoint is read here."""
    comps = recipe.components
    strategy = strategy if strategy is not None else build_strategy(recipe)
    torch.manual_seed(recipe.settings.seed * 7919 + strategy.rank)
    dataset: Dataset = comps["dataset"].cls(comps["dataset"].config).to(strategy.device)
    ctx = RunContext(recipe, strategy, dataset, run_dir, registry)
    method: Method = comps["method"].cls(comps["method"].config, ctx=ctx)
    built: list[Logger] = []
    if strategy.is_main and loggers:
        built = [r.cls(r.config, run_dir=str(run_dir)) for r in recipe.loggers.values()]
    metrics = {name: r.cls(r.config) for name, r in recipe.metrics.items()}
    return Run(ctx, method, built, metrics)


def plugin_versions(recipe: Recipe, registry: Registry) -> dict[str, Any]:
    """Name, plugin, package and version of every component of ``recipe``."""
    out = {}
    for table, comp in [*recipe.components.items(), *(("metrics." + k, v) for k, v in recipe.metrics.items()),
                        *(("loggers." + k, v) for k, v in recipe.loggers.items())]:
        prov = registry.entry(comp.kind, comp.name).provider
        out[table] = {"name": comp.name, "plugin": prov.plugin, "package": prov.package, "version": prov.version}
    return out
