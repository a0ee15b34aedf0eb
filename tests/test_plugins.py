"""Discovery: a third-party package installed with pip registers a divergence and a backbone through the
``diffratio`` entry point, a broken one is reported without stopping the rest, and the registry refuses
duplicates and explains unknown names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import diffratio
from diffratio.errors import PluginError
from diffratio.hooks import DivergenceSpec, hookimpl
from diffratio.registry import Provider, Registry, UnknownComponentError

from conftest import RECIPES, ROOT, TINY, run_cli, sets


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install the example plugin packages with pip into a separate site folder."""
    target = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
           "--target", str(target), str(ROOT / "tests" / "plugin_pkg"), str(ROOT / "tests" / "plugin_broken")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert any(p.name.startswith("diffratio_hellinger-0.3.1") for p in target.iterdir())
    return target


def test_third_party_plugin_is_listed_with_its_package(plugin_site: Path) -> None:
    res = run_cli("dr-plugins", "--json", env={"PYTHONPATH": str(plugin_site)})
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    rows = {(r["kind"], r["name"]): r for r in info["components"]}
    assert rows[("divergence", "sq-hellinger")]["package"] == "diffratio-hellinger"
    assert rows[("divergence", "sq-hellinger")]["version"] == "0.3.1"
    assert rows[("backbone", "tiny")]["fields"] == [
        {"name": "width", "type": "int", "bounds": "", "default": 32, "doc": ""}]
    assert rows[("divergence", "dijs")]["package"] == "diffratio"
    # the broken plugin is reported with its package name, and everything else still loaded
    assert [(f["plugin"], f["package"]) for f in info["failures"]] == [("broken", "diffratio-broken")]
    assert "broken on purpose" in info["failures"][0]["error"]


#: the tiny run without the MLP's settings: the tiny backbone has only ``width``, and a --set key is kept
#: when --set backbone.name switches the component
MLP_FREE_TINY = [s for s in TINY if not s.startswith("backbone.")]


def test_train_with_third_party_divergence_and_backbone(plugin_site: Path, tmp_path: Path) -> None:
    res = run_cli("dr-train", str(RECIPES / "toy2d.toml"), "--run-dir", str(tmp_path / "run"), "--no-progress",
                  *sets(*MLP_FREE_TINY, "divergence.name=sq-hellinger", "backbone.name=tiny", "backbone.width=16"),
                  env={"PYTHONPATH": str(plugin_site)})
    assert res.returncode == 0, res.stderr
    assert "broken on purpose" in res.stderr  # reported, not fatal
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["plugins"]["divergence"] == {"name": "sq-hellinger", "plugin": "hellinger",
                                             "package": "diffratio-hellinger", "version": "0.3.1"}
    assert info["plugins"]["backbone"]["package"] == "diffratio-hellinger"
    assert info["config"]["backbone"] == {"name": "tiny", "width": 16}
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 30


def test_without_the_plugin_its_names_are_unknown(tmp_path: Path) -> None:
    res = run_cli("dr-train", str(RECIPES / "toy2d.toml"), "--dry-run", *sets("divergence.name=sq-hellinger"))
    assert res.returncode == 2
    assert "unknown divergence 'sq-hellinger' (choices: dijs, f-divergence, kl, reverse-kl)" in res.stderr
    assert "Traceback" not in res.stderr


class _Dup:
    @hookimpl
    def diffratio_divergences(self):
        from diffratio_builtins.divergences import JensenShannon

        yield DivergenceSpec(name="dijs", cls=JensenShannon)


class _Raises:
    @hookimpl
    def diffratio_divergences(self):
        raise RuntimeError("boom")


class _NotADivergence:
    @hookimpl
    def diffratio_divergences(self):
        yield DivergenceSpec(name="oops", cls=int)


def _registry_with(plugin: object, name: str) -> Registry:
    reg = Registry()
    reg.register(plugin, Provider(name, f"pkg-{name}", "1.0"))
    return reg


def test_duplicate_names_fail_naming_both_sources() -> None:
    reg = _registry_with(_Dup(), "dup")
    with pytest.raises(PluginError) as err:
        reg.load(entry_points=False)
    msg = str(err.value)
    assert "divergence 'dijs' is registered twice" in msg
    assert "diffratio_builtins" in msg and "pkg-dup" in msg


def test_raising_hook_is_reported_and_others_load() -> None:
    reg = _registry_with(_Raises(), "raiser")
    with pytest.warns(UserWarning, match="raiser.*boom"):
        reg.load(entry_points=False)
    assert "dijs" in reg.names("divergence")
    assert reg.failures[0].package == "pkg-raiser"


def test_spec_with_wrong_class_is_reported() -> None:
    reg = _registry_with(_NotADivergence(), "bad")
    with pytest.warns(UserWarning, match="does not derive from diffratio.Divergence"):
        reg.load(entry_points=False)
    assert "oops" not in reg.names("divergence")


def test_unknown_name_lists_choices() -> None:
    reg = Registry().load(entry_points=False)
    with pytest.raises(UnknownComponentError, match=r"unknown method 'difratio' \(choices: .*diffratio"):
        reg.get("method", "difratio")


def test_public_api_exports_every_kind() -> None:
    for name in ("Backbone", "Generator", "RatioEstimator", "Divergence", "Method", "NoiseSchedule", "Dataset",
                 "Metric", "Strategy", "Logger", "hookimpl", "DivergenceSpec"):
        assert hasattr(diffratio, name)
