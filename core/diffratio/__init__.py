"""diffratio: train one-step generators with DiffRatio, and plug in divergences, backbones and methods.

The public API: component base classes, hook markers and spec records, and the helpers that plugins
use; docs/architecture.md lists the few modules a plugin may import besides this one. Built-in components
live in the ``diffratio_builtins`` package and use nothing but that API.
"""

from diffratio.components import (
    Backbone,
    Component,
    Dataset,
    Divergence,
    EmptyConfig,
    EvalContext,
    Generator,
    Logger,
    Metric,
    NoiseSchedule,
    RatioEstimator,
    Strategy,
    append_dims,
)
from diffratio.config import setting
from diffratio.devices import resolve_device
from diffratio.errors import (
    CheckpointError,
    DataError,
    DiffRatioError,
    MissingDependencyError,
    PluginError,
    RecipeError,
)
from diffratio.hooks import (
    BackboneSpec,
    ComponentSpec,
    DatasetSpec,
    DivergenceSpec,
    GeneratorSpec,
    LoggerSpec,
    MethodSpec,
    MetricSpec,
    RatioSpec,
    ScheduleSpec,
    StrategySpec,
    hookimpl,
)
from diffratio.method import DataInfo, Method, Sampler
from diffratio.trainable import OptimizerConfig, Trainable
from diffratio.zero import count_parameters, full_parameters, gathered, plain_copy

__version__ = "0.1.0"

__all__ = [
    "Backbone", "Component", "DataInfo", "Dataset", "Divergence", "EmptyConfig", "EvalContext", "Generator", "Logger",
    "Method", "Metric", "NoiseSchedule", "OptimizerConfig", "RatioEstimator", "Sampler", "Strategy", "Trainable",
    "append_dims", "count_parameters", "full_parameters", "gathered", "plain_copy", "resolve_device", "setting",
    "CheckpointError", "DataError",
    "DiffRatioError", "MissingDependencyError", "PluginError", "RecipeError", "BackboneSpec", "ComponentSpec",
    "DatasetSpec", "DivergenceSpec", "GeneratorSpec", "LoggerSpec", "MethodSpec", "MetricSpec", "RatioSpec",
    "ScheduleSpec", "StrategySpec", "hookimpl", "__version__",
]
