"""Conformance checks that every component must pass, for plugin authors and the project's own tests.

Call them from pytest; each raises ``ConformanceError`` (an ``AssertionError``) whose message names the
component and what is wrong::

    from diffratio.testing import check_backbone, check_component, check_divergence

    def test_my_divergence() -> None:
        check_divergence(MyDivergence)

    def test_my_backbone() -> None:
        check_backbone(MyBackbone, data_shape=(2,), config=MyBackbone.Config(width=16))

    def test_by_kind() -> None:
        check_component("divergence", MyDivergence)

What is checked, for every kind: the nested ``Config`` is a frozen, kw_only attrs class whose fields all
have types, built with its defaults (or the ``config`` given, when a field is required), and it survives
``diffratio.recipe.converter`` unstructure -> JSON -> structure unchanged (what a recipe and run.json do);
the component stores its config as ``self.config``. Per kind:

- divergence: ``weight(f) = r^2 F''(r)`` with ``r = exp(-f)`` (second derivative of ``F`` by autograd in
  float64) at several ``f``; ``F(1) = 0``; weights elementwise, finite and >= 0 for ``f`` in [-20, 20].
- schedule: sigma > 0, finite, shape (n,), the same under the same seed; both loss weights finite, >= 0.
- backbone (full and encoder mode): output shapes, state_dict round trip, the same parameters and output
  under the same seed, finite gradients reaching every parameter (after giving zero-initialised layers
  small random values, since a zero output layer blocks the gradient to everything before it), encoder
  tensors a subset of full mode's by name with equal shapes.
- generator / ratio estimator (over a small backbone): shapes, state_dict round trip, determinism,
  gradient flow; the ratio's logit has finite, non-zero gradients with respect to its input, also with
  its parameters frozen (as in the generator step); ``init_from_denoiser`` copies what it reports.
- dataset: shapes, dtypes, labels in range, finite values, the same data for the same config.
- metric: finite named values, the same under the same seed.
- strategy: a prepared model trains, a step with a non-finite loss is skipped, and the state dict (with
  the files of ``Trainable.save_files``, DeepSpeed's own checkpoint) restores model and optimiser exactly.
- logger: scalars, an image and text are accepted; lifecycle methods accept the hook's arguments.
- method: a few training steps on a tiny run give finite scalars, the same under the same seed; the
  state dict survives ``torch.load(weights_only=True)`` and a run rebuilt from it continues exactly.

Each kind's check lives in a module of its name (``diffratio.testing.divergence`` ... ``.method``); import
them from ``diffratio.testing``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffratio.kinds import KINDS
from diffratio.testing._networks import perturb_zero_parameters
from diffratio.testing._shared import ConformanceError, check_config
from diffratio.testing.backbone import TinyBackbone, check_backbone
from diffratio.testing.dataset import GaussianPoints, check_dataset
from diffratio.testing.divergence import check_divergence
from diffratio.testing.generator import check_generator
from diffratio.testing.logger import check_logger
from diffratio.testing.method import check_method, make_recipe
from diffratio.testing.metric import check_metric
from diffratio.testing.ratio import check_ratio
from diffratio.testing.schedule import check_schedule
from diffratio.testing.strategy import check_strategy

__all__ = [
    "ConformanceError", "check_component", "check_config", "check_divergence", "check_schedule",
    "check_backbone", "check_generator", "check_ratio", "check_dataset", "check_metric", "check_strategy",
    "check_logger", "check_method", "make_recipe", "perturb_zero_parameters", "TinyBackbone", "GaussianPoints",
]

#: the check of each component kind
CHECKS: dict[str, Callable[..., None]] = {
    "backbone": check_backbone,
    "generator": check_generator,
    "ratio": check_ratio,
    "divergence": check_divergence,
    "method": check_method,
    "schedule": check_schedule,
    "dataset": check_dataset,
    "metric": check_metric,
    "strategy": check_strategy,
    "logger": check_logger,
}
assert set(CHECKS) == set(KINDS), "every component kind needs a conformance check"


def check_component(kind: str, cls: type, config: Any = None, **options: Any) -> None:
    """Run the checks of ``kind`` (a key of ``diffratio.kinds.KINDS``) on ``cls``; ``options`` go to
    the kind's check (``data_shape=`` for a backbone, ``dataset=`` for a metric, ...)."""
    if kind not in CHECKS:
        raise ValueError(f"unknown component kind {kind!r} (kinds: {', '.join(CHECKS)})")
    CHECKS[kind](cls, config, **options)
