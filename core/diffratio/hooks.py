"""pluggy hook specifications: component registration (discovery) and run lifecycle events.

A plugin is any module or object with ``@hookimpl`` functions. Registration hooks return (or yield)
``ComponentSpec`` records. Lifecycle hooks are called by pluggy with keyword arguments, so an implementation
declares only the arguments it needs (``def diffratio_on_step_end(step): ...``); they return nothing, run on
the main rank only, and an exception in one is reported once and does not stop the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

if TYPE_CHECKING:
    from diffratio.run import Run

PROJECT = "diffratio"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@attrs.frozen(kw_only=True)
class ComponentSpec:
    """One registered component: its kind (a key of ``diffratio.kinds.KINDS``), name and class."""

    kind: str
    name: str
    cls: type
    description: str = ""


def _spec(kind: str) -> Any:
    def factory(**kwargs: Any) -> ComponentSpec:
        return ComponentSpec(kind=kind, **kwargs)

    factory.__name__ = f"{kind.title()}Spec"
    return factory


BackboneSpec = _spec("backbone")
GeneratorSpec = _spec("generator")
RatioSpec = _spec("ratio")
DivergenceSpec = _spec("divergence")
MethodSpec = _spec("method")
ScheduleSpec = _spec("schedule")
DatasetSpec = _spec("dataset")
MetricSpec = _spec("metric")
StrategySpec = _spec("strategy")
LoggerSpec = _spec("logger")


class Hookspecs:
    """The hooks a plugin may implement. Each registration hook returns an iterable of specs."""

    @hookspec
    def diffratio_backbones(self) -> Iterable[ComponentSpec]:
        """Backbones (U-Net, DiT, MLP, ...)."""

    @hookspec
    def diffratio_generators(self) -> Iterable[ComponentSpec]:
        """One-step generators."""

    @hookspec
    def diffratio_ratios(self) -> Iterable[ComponentSpec]:
        """Ratio estimators."""

    @hookspec
    def diffratio_divergences(self) -> Iterable[ComponentSpec]:
        """Divergences (the weight h(f) of the generator loss)."""

    @hookspec
    def diffratio_methods(self) -> Iterable[ComponentSpec]:
        """Training methods (diffratio, vsd, edm, ...)."""

    @hookspec
    def diffratio_schedules(self) -> Iterable[ComponentSpec]:
        """Noise schedules."""

    @hookspec
    def diffratio_datasets(self) -> Iterable[ComponentSpec]:
        """Data sets."""

    @hookspec
    def diffratio_metrics(self) -> Iterable[ComponentSpec]:
        """Metrics."""

    @hookspec
    def diffratio_strategies(self) -> Iterable[ComponentSpec]:
        """Device strategies."""

    @hookspec
    def diffratio_loggers(self) -> Iterable[ComponentSpec]:
        """Loggers."""

    # ---- lifecycle events (plugins and the run's loggers; main rank only) ----

    @hookspec
    def diffratio_on_run_start(self, run: Run) -> None:
        """After models are built and any checkpoint is loaded, before the first step (``run.step``)."""

    @hookspec
    def diffratio_on_step_end(self, run: Run, step: int, scalars: Mapping[str, float]) -> None:
        """At every logging interval (and the last step), with each scalar averaged over the finite values
        since the last call, plus ``images_per_second`` and ``nonfinite/skipped_steps``."""

    @hookspec
    def diffratio_on_evaluation(self, run: Run, step: int, results: Mapping[str, float]) -> None:
        """After the recipe's metrics were computed (every ``run.eval_every`` steps and at the end)."""

    @hookspec
    def diffratio_on_checkpoint(self, run: Run, step: int, path: str) -> None:
        """After the checkpoint of ``step`` was committed into the folder ``path``."""

    @hookspec
    def diffratio_on_run_end(self, run: Run, step: int) -> None:
        """When the run stops: finished, interrupted by a signal, diverged or failed."""


LIFECYCLE_HOOKS: tuple[str, ...] = ("diffratio_on_run_start", "diffratio_on_step_end", "diffratio_on_evaluation",
                                    "diffratio_on_checkpoint", "diffratio_on_run_end")

REGISTRATION_HOOKS: dict[str, str] = {
    "backbone": "diffratio_backbones",
    "generator": "diffratio_generators",
    "ratio": "diffratio_ratios",
    "divergence": "diffratio_divergences",
    "method": "diffratio_methods",
    "schedule": "diffratio_schedules",
    "dataset": "diffratio_datasets",
    "metric": "diffratio_metrics",
    "strategy": "diffratio_strategies",
    "logger": "diffratio_loggers",
}
