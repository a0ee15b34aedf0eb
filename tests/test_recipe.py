"""Strict recipes: every error names its dotted path, all are reported together, the CLI prints one clear
message without a traceback and exits non-zero; --set overrides and precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffratio.errors import RecipeError
from diffratio.recipe import load_recipe, parse_set, resolve_recipe
from diffratio.registry import default_registry

from conftest import RECIPES, run_cli, sets

REG = default_registry()
TOY = RECIPES / "toy2d.toml"


def errors_of(doc: dict, *overrides: str) -> list[str]:
    with pytest.raises(RecipeError) as err:
        resolve_recipe(doc, overrides, registry=REG)
    return err.value.errors


def base() -> dict:
    return {"method": {"name": "diffratio"}, "dataset": {"name": "ring"}, "backbone": {"name": "mlp"}}


def test_minimal_recipe_takes_defaults() -> None:
    r = resolve_recipe(base(), registry=REG)
    assert r.components["divergence"].name == "dijs"
    assert r.components["schedule"].name == "lognormal"
    assert r.settings.steps == 1000
    assert list(r.loggers) == ["tensorboard"]


def test_unknown_key_names_path_and_known_keys() -> None:
    doc = base()
    doc["divergence"] = {"name": "kl", "max_log_wieght": 3.0}
    (msg,) = errors_of(doc)
    assert msg.startswith("recipe.divergence.max_log_wieght: unknown key (known keys: max_log_weight)")


def test_strict_types_no_silent_conversion() -> None:
    doc = base()
    doc["run"] = {"steps": 64.9, "seed": "3"}
    doc["backbone"]["hidden"] = True
    doc["strategy"] = {"name": "single", "tf32": "false"}
    errs = errors_of(doc)
    assert any(e.startswith("recipe.run.steps: expected int, got float (64.9)") for e in errs)
    assert any(e.startswith("recipe.run.seed: expected int, got str") for e in errs)
    assert any(e.startswith("recipe.backbone.hidden: expected int, got a boolean") for e in errs)
    assert any(e.startswith("recipe.strategy.tf32: expected bool, got str") for e in errs)
    assert len(errs) == 4  # all reported together


def test_a_table_field_given_another_value_names_the_table() -> None:
    doc = base()
    doc["strategy"] = {"name": "deepspeed", "engine_config": 3}
    assert errors_of(doc) == ["recipe.strategy.engine_config: expected a table ({key = value, ...}), got int"]


def test_validators_and_literals() -> None:
    doc = base()
    doc["backbone"]["depth"] = 0
    doc["strategy"] = {"name": "single", "precision": "fp8"}
    errs = errors_of(doc)
    assert any(e.startswith("recipe.backbone.depth:") and "1" in e for e in errs)
    assert any(e.startswith("recipe.strategy.precision: must be one of 'fp32', 'bf16'") for e in errs)


def test_nested_config_paths() -> None:
    doc = base()
    doc["method"]["generator_optimizer"] = {"lr": "fast", "betas": [0.9]}
    errs = errors_of(doc)
    assert any(e.startswith("recipe.method.generator_optimizer.lr: expected float") for e in errs)
    assert any(e.startswith("recipe.method.generator_optimizer.betas: expected an array of 2") for e in errs)


def test_lr_decay_errors_name_their_paths() -> None:
    doc = base()
    doc["method"]["generator_optimizer"] = {"lr_decay": "cosin", "lr_final": 2.0}
    doc["method"]["ratio_optimizer"] = {"lr_decay_start": 1.0}
    errs = errors_of(doc)
    assert "recipe.method.generator_optimizer.lr_decay: must be one of 'none', 'cosine', 'linear', got 'cosin'" in errs
    errs = errors_of(doc, "method.generator_optimizer.lr_decay='cosine'")
    assert errs == ["recipe.method.generator_optimizer.lr_final: must be <= 1, got 2.0",
                    "recipe.method.ratio_optimizer.lr_decay_start: must be < 1, got 1.0"]


def test_unknown_component_lists_choices() -> None:
    doc = base()
    doc["divergence"] = {"name": "jsd"}
    (msg,) = errors_of(doc)
    assert msg == "recipe.divergence.name: unknown divergence 'jsd' (choices: dijs, f-divergence, kl, reverse-kl)"


def test_missing_and_unknown_tables() -> None:
    errs = errors_of({"method": {"name": "diffratio"}, "datset": {"name": "ring"}})
    assert "recipe.dataset: missing table (add [dataset] with name = ...)" in errs
    assert any(e.startswith("recipe.datset: unknown table") for e in errs)


def test_set_overrides_recipe_and_switching_component_drops_old_settings() -> None:
    r = load_recipe(TOY, ["run.steps=7", "divergence.name=kl", "schedule.p_std=2", "method.ratio_optimizer.lr=5e-4"],
                    registry=REG)
    assert r.settings.steps == 7
    assert r.components["divergence"].name == "kl"
    assert r.components["schedule"].config.p_std == 2.0
    assert r.components["method"].config.ratio_optimizer.lr == 5e-4
    assert r.components["method"].config.ratio_optimizer.betas == (0.0, 0.99)  # rest of the table kept
    r2 = load_recipe(TOY, ["dataset.name=moons"], registry=REG)  # the ring's keys do not leak into moons
    assert r2.components["dataset"].name == "moons"


def test_partial_nested_table_keeps_the_components_defaults() -> None:
    doc = base()
    doc["method"]["generator_optimizer"] = {"betas": [0.0, 0.9]}
    cfg = resolve_recipe(doc, registry=REG).components["method"].config
    assert cfg.generator_optimizer.betas == (0.0, 0.9)
    assert cfg.generator_optimizer.lr == 3e-5  # the diffratio method's default, not OptimizerConfig's 1e-4


@pytest.mark.parametrize("item", ["run.steps", "=3", "run..steps=3", "run.steps=[1,", "run.name=a b"])
def test_bad_set_syntax(item: str) -> None:
    with pytest.raises(RecipeError, match="--set"):
        parse_set(item)


def test_set_values_are_toml_literals() -> None:
    assert parse_set("a.b=3") == (["a", "b"], 3)
    assert parse_set("a.b=3.0") == (["a", "b"], 3.0)
    assert parse_set("a.b=true") == (["a", "b"], True)
    assert parse_set("a.b=[0.0, 0.99]") == (["a", "b"], [0.0, 0.99])
    assert parse_set("a.b='x y'") == (["a", "b"], "x y")
    assert parse_set("a.b=dijs") == (["a", "b"], "dijs")  # a bare word is a string


@pytest.mark.parametrize(
    "args,expected",
    [
        (sets("divergence.alpah=1"), "recipe.divergence.alpah: unknown key"),
        (sets("run.steps=12.5"), "recipe.run.steps: expected int, got float (12.5)"),
        (sets("divergence.name=jsd"), "unknown divergence 'jsd' (choices: dijs, f-divergence, kl, reverse-kl)"),
        (sets("run.steps"), "--set 'run.steps': expected KEY=VALUE"),
    ],
)
def test_cli_reports_recipe_errors_without_traceback(args: list[str], expected: str) -> None:
    res = run_cli("dr-train", str(TOY), "--dry-run", *args)
    assert res.returncode == 2
    assert expected in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("error: recipe has 1 problem:")


def test_cli_missing_recipe_file(tmp_path: Path) -> None:
    res = run_cli("dr-train", str(tmp_path / "nope.toml"), "--dry-run")
    assert res.returncode == 2
    assert "nope.toml' does not exist" in res.stderr and "Traceback" not in res.stderr


def test_cli_invalid_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nsteps = 3\n")
    res = run_cli("dr-train", str(bad), "--dry-run")
    assert res.returncode == 2 and "not valid TOML" in res.stderr and "Traceback" not in res.stderr


def test_dry_run_prints_resolved_config_and_providers() -> None:
    import json

    res = run_cli("dr-train", str(TOY), "--dry-run", *sets("run.steps=5"))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["config"]["run"]["steps"] == 5
    assert out["config"]["divergence"] == {"name": "dijs"}
    assert out["plugins"]["method"]["package"] == "diffratio"
    assert out["run_dir"] == "runs/toy2d"


def test_mlp_input_features_must_be_even() -> None:
    errs = errors_of(base(), "backbone.input_features=3")
    assert any(e.startswith("recipe.backbone.input_features: must be an even number >= 0") for e in errs), errs
