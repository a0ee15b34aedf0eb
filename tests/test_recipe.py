"""Strict recipes: every error names its dotted path, all are reported together, the CLI prints one clear
message without a traceback and exits non-zero; --set overrides and precedence."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import attrs
import pytest

import diffratio
from diffratio.config import setting
from diffratio.errors import RecipeError
from diffratio.recipe import load_recipe, parse_set, resolve_recipe, structure_config
from diffratio.registry import Provider, Registry, default_registry

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


# --------------------------------------------------------------------------------------------------
# --set means what it says
# --------------------------------------------------------------------------------------------------


def test_setting_the_run_name_keeps_the_run_table() -> None:
    r = load_recipe(TOY, ["run.name=x"], registry=REG)
    assert (r.settings.name, r.settings.steps, r.settings.batch_size) == ("x", 2100, 1024)  # the recipe's values


@pytest.mark.parametrize("order", [("dataset.std=0.3", "dataset.name=grid"), ("dataset.name=grid", "dataset.std=0.3")])
def test_a_components_name_applies_before_its_fields_whatever_the_order(order: tuple[str, str]) -> None:
    r = resolve_recipe(base(), order, registry=REG)
    assert r.components["dataset"].name == "grid" and r.components["dataset"].config.std == 0.3


def test_naming_the_same_component_keeps_its_settings() -> None:
    doc = base()
    doc["dataset"]["radius"] = 3.0
    r = resolve_recipe(doc, ["dataset.name=ring"], registry=REG)
    assert r.components["dataset"].config.radius == 3.0 and r.notes == ()
    doc = base()
    doc["schedule"] = {"p_mean": -0.4}  # no name: the default component, lognormal
    r = resolve_recipe(doc, ["schedule.name=lognormal"], registry=REG)
    assert r.components["schedule"].config.p_mean == -0.4 and r.notes == ()


def test_a_change_of_component_drops_the_old_settings_and_says_which(capsys: pytest.CaptureFixture[str]) -> None:
    r = load_recipe(TOY, ["dataset.name=moons", "dataset.noise=0.1"], registry=REG)
    assert r.components["dataset"].name == "moons" and r.components["dataset"].config.noise == 0.1
    (note,) = r.notes
    assert "'ring' to 'moons'" in note and "components = 8, radius = 2.0, std = 0.1" in note
    assert f"note: {note}" in capsys.readouterr().err  # printed on the console


def test_metrics_and_loggers_are_switched_off_not_dropped() -> None:
    r = load_recipe(TOY, ["loggers.tensorboard=false"], registry=REG)
    assert "tensorboard" not in r.loggers and "energy-distance" in r.metrics


def test_set_quoting_rule_as_documented() -> None:
    """The rule of recipe.SET_RULE, as the shell hands the values over."""
    assert parse_set('run.name="my run"') == (["run", "name"], "my run")  # --set run.name='"my run"'
    assert parse_set("run.name='my run'") == (["run", "name"], "my run")  # --set "run.name='my run'"
    assert parse_set("method.init=runs/toy2d-pretrain") == (["method", "init"], "runs/toy2d-pretrain")
    assert parse_set("run.name=2024") == (["run", "name"], 2024)  # TOML first: a number stays a number
    for bad in ("run.name=my run", "run.name=2x", "run.name=-x"):
        with pytest.raises(RecipeError, match="quotes"):
            parse_set(bad)


def test_cli_set_quoting(tmp_path: Path) -> None:
    import json

    res = run_cli("dr-train", str(TOY), "--dry-run", "--set", 'run.name="my run"')
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["config"]["run"]["name"] == "my run"


# --------------------------------------------------------------------------------------------------
# Error paths from cattrs' structured errors, for any component's Config
# --------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Inner:
    lr: float = setting(1e-4, "learning rate", ge=0)
    steps: int = setting(1, "steps", ge=1)


@attrs.frozen(kw_only=True)
class _Outer:
    p_std: float = setting(1.2, "standard deviation", gt=0)
    threads: int = setting(0, "threads", ge=0)
    mode: Literal["a", "b"] = setting("a", "mode")
    inner: _Inner = setting(_Inner(), "a nested table")
    pairs: tuple[_Inner, ...] = setting((), "an array of tables")
    plain: int = attrs.field(default=0, validator=attrs.validators.ge(0))


def test_every_bad_value_of_a_config_is_reported_with_its_path() -> None:
    _, errs = structure_config({"p_std": -1.0, "threads": -1, "mode": "c", "inner": {"lr": -1.0, "steps": 0}},
                               _Outer, "recipe.schedule")
    assert errs == ["recipe.schedule.mode: must be one of 'a', 'b', got 'c'",
                    "recipe.schedule.inner.lr: must be >= 0, got -1.0",
                    "recipe.schedule.inner.steps: must be >= 1, got 0",
                    "recipe.schedule.p_std: must be > 0, got -1.0",
                    "recipe.schedule.threads: must be >= 0, got -1"]


def test_type_errors_and_bound_violations_are_reported_together() -> None:
    _, errs = structure_config({"p_std": -1.0, "threads": "many", "alpah": 1, "pairs": [{"lr": 1.0}, {"lr": -2.0}]},
                               _Outer, "recipe.x")
    assert "recipe.x.threads: expected int, got str ('many')" in errs
    assert "recipe.x.p_std: must be > 0, got -1.0" in errs
    assert any(e.startswith("recipe.x.alpah: unknown key (known keys: p_std, threads,") for e in errs)
    assert "recipe.x.pairs[1].lr: must be >= 0, got -2.0" in errs
    assert len(errs) == 4


def test_plain_attrs_validators_are_reported_at_their_path_too() -> None:
    _, errs = structure_config({"plain": -1, "threads": -1}, _Outer, "recipe.x")
    assert errs[0] == "recipe.x.threads: must be >= 0, got -1"
    assert len(errs) == 2 and errs[1].startswith("recipe.x.plain: ") and "-1" in errs[1]


def test_a_table_given_another_value_names_it() -> None:
    _, errs = structure_config({"inner": 3}, _Outer, "recipe.x")
    assert errs == ["recipe.x.inner: expected a table ({key = value, ...}), got int"]


def test_a_local_component_configs_bounds_fail_the_recipe() -> None:
    registry = Registry()

    class Schedule(diffratio.NoiseSchedule):
        Config = _Outer

        def sample(self, n: int, device: Any = "cpu") -> Any:
            raise NotImplementedError

    class Plugin:
        @diffratio.hookimpl
        def diffratio_schedules(self) -> Any:
            yield diffratio.ScheduleSpec(name="local", cls=Schedule, description="test")

    registry.register(Plugin(), Provider("local", "local", "0"))
    registry.load(entry_points=False)
    doc = {**base(), "schedule": {"name": "local", "p_std": -1.0}, "run": {"batch_size": 0}}
    with pytest.raises(RecipeError) as err:
        resolve_recipe(doc, registry=registry)
    assert err.value.errors == ["recipe.run.batch_size: must be >= 1, got 0",
                                "recipe.schedule.p_std: must be > 0, got -1.0"]
