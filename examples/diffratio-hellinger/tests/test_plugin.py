"""The plugin's own tests: it is found through its entry point, its components pass diffratio's
conformance checks, and its recipe trains. Run after installing the package:

    pip install ./examples/diffratio-hellinger
    python -m pytest examples/diffratio-hellinger/tests
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffratio.engine import training_loop
from diffratio.recipe import load_recipe
from diffratio.registry import default_registry
from diffratio.testing import check_backbone, check_component, check_divergence

from hellinger_example import FiLMBackbone, SquaredHellinger

RECIPE = Path(__file__).resolve().parents[1] / "recipe.toml"
SMALL = FiLMBackbone.Config(hidden=16, depth=2, frequencies=4)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks run fastest on one CPU thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_components_are_registered_through_the_entry_point() -> None:
    registry = default_registry()
    divergence = registry.entry("divergence", "hellinger")
    assert divergence.spec.cls is SquaredHellinger
    assert divergence.provider.package == "diffratio-hellinger-example"
    assert registry.get("backbone", "film-mlp").cls is FiLMBackbone


def test_divergence_conforms() -> None:
    check_component("divergence", SquaredHellinger)


def test_weight_is_exact_up_to_the_clamp() -> None:
    # h(f) = r^2 F''(r) holds on the whole range [-20, 20], not only near f = 0
    check_divergence(SquaredHellinger, f_values=(-20.0, -10.0, 0.0, 10.0, 20.0))
    clamped = SquaredHellinger(SquaredHellinger.Config(max_log_weight=0.0))
    assert float(clamped.weight(torch.tensor(-30.0))) == 1.0


def test_same_weight_as_the_builtin_f_divergence() -> None:
    builtin = default_registry().get("divergence", "f-divergence").cls
    reference = builtin(builtin.Config(function="hellinger"))
    f = torch.linspace(-8.0, 8.0, 101)  # inside the built-in's own clamp
    torch.testing.assert_close(SquaredHellinger().weight(f), reference.weight(f))


@pytest.mark.parametrize(("data_shape", "num_labels"), [((2,), 0), ((2,), 3), ((1, 4, 4), 0)])
def test_backbone_conforms(data_shape: tuple[int, ...], num_labels: int) -> None:
    check_backbone(FiLMBackbone, SMALL, data_shape=data_shape, num_labels=num_labels)


@pytest.mark.parametrize("kind", ["generator", "ratio"])
def test_builtin_generator_and_ratio_over_the_backbone(kind: str) -> None:
    cls = default_registry().get(kind, "edm" if kind == "generator" else "classifier").cls
    check_component(kind, cls, backbone=FiLMBackbone, backbone_config=SMALL, num_labels=3)


def test_recipe_trains(tmp_path: Path) -> None:
    registry = default_registry()
    recipe = load_recipe(RECIPE, ["run.steps=20", "run.log_every=10", "method.warmup_ratio_steps=5",
                                  "metrics.energy-distance.num_samples=100"], registry=registry)
    training_loop(recipe, tmp_path, registry, progress=False)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["plugins"]["divergence"]["package"] == "diffratio-hellinger-example"
    assert info["plugins"]["backbone"]["package"] == "diffratio-hellinger-example"
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 20 and last["energy-distance/energy_distance"] > 0
