"""Pre-flight checks of a resolved recipe (``diffratio.preflight``): a run initialised from another must
use that run's backbone, and metrics that compare images need image data."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import diffratio
from diffratio.errors import RecipeError
from diffratio.preflight import gives_images, preflight
from diffratio.recipe import Recipe, load_recipe, resolve_recipe
from diffratio.registry import Provider, Registry, default_registry

from conftest import RECIPES, run_cli, sets

REG = default_registry()
TOY = RECIPES / "toy2d.toml"


def fake_run(run_dir: Path, **backbone: Any) -> Path:
    """A run directory whose run.json records ``backbone`` (the file dr-train writes, reduced to it)."""
    (run_dir / "checkpoints" / "000010").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"config": {"backbone": backbone}}))
    return run_dir


def toy(*overrides: str, registry: Registry = REG) -> Recipe:
    return load_recipe(TOY, overrides, registry=registry)


def problems(recipe: Recipe) -> list[str]:
    with pytest.raises(RecipeError) as err:
        preflight(recipe)
    return err.value.errors


MLP = {"name": "mlp", "hidden": 128, "depth": 3, "embed_dim": 64, "dropout": 0.0, "input_features": 0,
       "input_scale": 1.0}


def test_the_same_backbone_passes(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "pre", **MLP)
    preflight(toy(f"method.init={run}"))
    preflight(toy(f"method.init={run}/checkpoints/000010"))  # a checkpoint of the run: its run.json


def test_a_different_backbone_names_both_runs_and_each_difference(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "pre", **{**MLP, "hidden": 64, "depth": 2})
    (msg,) = problems(toy(f"method.init={run}"))
    assert msg.startswith("recipe.backbone: differs from the backbone of the run it initialises from "
                          f"(method.init = {run}, read from {run / 'run.json'}): ")
    assert "hidden: 64 there, 128 here; depth: 2 there, 3 here." in msg


def test_settings_that_keep_the_parameters_may_differ(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "pre", **{**MLP, "dropout": 0.2, "input_scale": 3.0})
    preflight(toy(f"method.init={run}"))


def test_another_kind_of_backbone_is_named(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "pre", name="unet", model_channels=32)
    (msg,) = problems(toy(f"method.init={run}"))
    assert "name: 'unet' there, 'mlp' here" in msg


def test_a_missing_init_run_is_named(tmp_path: Path) -> None:
    (msg,) = problems(toy(f"method.init={tmp_path / 'nowhere'}"))
    assert msg.startswith(f"recipe.method.init: {tmp_path / 'nowhere'} does not exist")


def test_an_exported_file_carries_its_config(tmp_path: Path) -> None:
    torch.save({"format": 1, "config": {"backbone": {**MLP, "hidden": 32}}}, tmp_path / "model.pt")
    (msg,) = problems(toy(f"method.init={tmp_path / 'model.pt'}"))
    assert "hidden: 32 there, 128 here" in msg


def test_a_real_pretraining_run(tmp_path: Path) -> None:
    """The run.json that dr-train writes, read back: a one-step recipe with another width is refused."""
    res = run_cli("dr-train", str(RECIPES / "toy2d-pretrain.toml"), "--run-dir", str(tmp_path / "pre"),
                  "--no-progress", *sets("run.steps=2", "run.batch_size=16", "run.min_free_disk_gb=0.01",
                                         "metrics.energy-distance=false", "loggers.tensorboard=false"))
    assert res.returncode == 0, res.stderr
    pre = json.loads((tmp_path / "pre" / "run.json").read_text())["config"]["backbone"]
    preflight(toy(f"method.init={tmp_path / 'pre'}", *(f"backbone.{k}={json.dumps(v)}" for k, v in pre.items()
                                                       if k != "name")))
    (msg,) = problems(toy(f"method.init={tmp_path / 'pre'}", f"backbone.hidden={pre['hidden'] + 8}"))
    assert f"hidden: {pre['hidden']} there, {pre['hidden'] + 8} here" in msg


# --------------------------------------------------------------------------------------------------
# Metrics against the data
# --------------------------------------------------------------------------------------------------


class _ImageMetric(diffratio.Metric):
    needs_images: ClassVar[bool] = True

    def compute(self, ctx: Any) -> dict[str, float]:
        raise NotImplementedError


class _Plugin:
    @diffratio.hookimpl
    def diffratio_metrics(self) -> Any:
        yield diffratio.MetricSpec(name="image-metric", cls=_ImageMetric, description="test")


@pytest.fixture(scope="module")
def registry() -> Registry:
    reg = Registry()
    reg.register(_Plugin(), Provider("local", "local", "0"))
    return reg.load(entry_points=False)


def test_which_data_sets_give_images() -> None:
    assert not gives_images(REG.get("dataset", "ring").cls)
    assert gives_images(REG.get("dataset", "mnist").cls)


def _with_image_metric(dataset: dict[str, Any], registry: Registry) -> Recipe:
    doc = tomllib.loads(TOY.read_text())
    doc["dataset"] = dataset
    doc["metrics"] = {"image-metric": {}}
    return resolve_recipe(doc, registry=registry)


def test_an_image_metric_on_2d_data_is_refused(registry: Registry) -> None:
    (msg,) = problems(_with_image_metric({"name": "ring"}, registry))
    assert msg.startswith("recipe.metrics.image-metric: the 'image-metric' metric needs image data, but the data "
                          "set 'ring' gives no images")


def test_an_image_metric_on_image_data_passes(registry: Registry) -> None:
    preflight(_with_image_metric({"name": "mnist"}, registry))
