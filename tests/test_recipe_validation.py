"""Bad values are refused when the recipe is read: through the real ``dr-train``, exit status 2, one
paragraph naming each dotted key, no traceback, and no run directory created."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import RECIPES, run_cli, sets

TOY = RECIPES / "toy2d.toml"
#: a run of a few steps, so that a value wrongly accepted fails the test quickly (the value under test is given
#: after these, and the last --set of a key wins)
SHORT = ("run.steps=2", "run.batch_size=16", "run.min_free_disk_gb=0.01", "metrics.energy-distance=false",
         "loggers.tensorboard=false", "method.warmup_ratio_steps=0")


def refused(tmp_path: Path, recipe: Path, *args: str) -> str:
    """Run dr-train (not a dry run) in an empty folder; assert the clean refusal; return its message."""
    res = run_cli("dr-train", str(recipe), "--run-dir", str(tmp_path / "run"), "--no-progress", *args, cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    message = res.stderr.strip()
    assert message.startswith("error: recipe has "), message
    assert "Traceback" not in res.stderr and "\n\n" not in message, message  # one paragraph
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists(), "a run directory was created"
    return message


@pytest.mark.parametrize(("item", "expected"), [
    ("run.batch_size=-5", "recipe.run.batch_size: must be >= 1, got -5"),
    ("run.batch_size=0", "recipe.run.batch_size: must be >= 1, got 0"),
    ("run.checkpoint_every=0", "recipe.run.checkpoint_every: must be >= 1, got 0"),
    ("run.log_every=0", "recipe.run.log_every: must be >= 1, got 0"),
    ("run.steps=-10", "recipe.run.steps: must be >= 1, got -10"),
    ("run.steps=0", "recipe.run.steps: must be >= 1, got 0"),
    ("run.keep_checkpoints=-1", "recipe.run.keep_checkpoints: must be >= 0, got -1"),
    ("run.eval_every=-1", "recipe.run.eval_every: must be >= 0, got -1"),
])
def test_bad_run_settings_are_refused_before_anything_runs(tmp_path: Path, item: str, expected: str) -> None:
    assert expected in refused(tmp_path, TOY, *sets(*SHORT, item))


@pytest.mark.parametrize(("item", "expected"), [
    ("strategy.threads=-1", "recipe.strategy.threads: must be >= 0, got -1"),
    ("schedule.p_std=-1", "recipe.schedule.p_std: must be > 0, got -1"),
    ("method.generator_optimizer.lr=-1", "recipe.method.generator_optimizer.lr: must be >= 0, got -1"),
    ("method.ratio_optimizer.weight_decay=-1", "recipe.method.ratio_optimizer.weight_decay: must be >= 0, got -1"),
])
def test_bad_component_settings_are_refused_before_anything_runs(tmp_path: Path, item: str, expected: str) -> None:
    """The bounds are each component's own (``setting(..., ge=0)``); the recipe reports them like its own."""
    assert expected in refused(tmp_path, TOY, *sets(*SHORT, item))


def test_every_bad_value_is_reported_at_once(tmp_path: Path) -> None:
    message = refused(tmp_path, TOY, *sets("run.batch_size=0", "run.log_every=0", "run.steps=12.5",
                                           "backbone.depth=0"))
    assert message.startswith("error: recipe has 4 problems:")
    for key in ("run.batch_size", "run.log_every", "run.steps", "backbone.depth"):
        assert f"recipe.{key}: " in message


def test_a_recipe_that_is_not_utf8_is_a_recipe_error(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(TOY.read_bytes() + "# caf\u00e9\n".encode("latin-1"))
    message = refused(tmp_path, bad)
    offset = len(TOY.read_bytes()) + len(b"# caf")
    assert f"is not UTF-8 text: byte {offset}" in message and str(bad) in message
