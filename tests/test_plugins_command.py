"""``dr-plugins`` shows every field's meaning and bounds, for third-party plugins too; an unknown ``--kind``
is an error listing the kinds; ``python -m diffratio -h`` lists the commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli

PLUGIN = '''
import attrs
import diffratio
from diffratio.config import setting


class Wide(diffratio.Divergence):
    """A third-party divergence."""

    @attrs.frozen(kw_only=True)
    class Config:
        width: float = setting(2.0, "how wide the weights are", gt=0)
        plain: int = 3

    def weight(self, f):
        return f.exp()


@diffratio.hookimpl
def diffratio_divergences():
    yield diffratio.DivergenceSpec(name="wide", cls=Wide, description="a third-party divergence")
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder that holds an installed distribution: a module and its dist-info with the entry point."""
    site = tmp_path_factory.mktemp("site")
    (site / "wide_plugin.py").write_text(PLUGIN)
    info = site / "wide_plugin-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wide-plugin\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text("[diffratio]\nwide = wide_plugin\n")
    return site


def test_json_shows_the_meaning_and_bounds_of_third_party_fields(plugin_site: Path) -> None:
    res = run_cli("dr-plugins", "--json", "--kind", "divergence", env={"PYTHONPATH": str(plugin_site)})
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)["components"]}
    assert rows["wide"]["package"] == "wide-plugin" and rows["wide"]["version"] == "1.2"
    assert rows["wide"]["fields"] == [
        {"name": "width", "type": "float", "bounds": "> 0", "default": 2.0, "doc": "how wide the weights are"},
        {"name": "plain", "type": "int", "bounds": "", "default": 3, "doc": ""},
    ]
    assert {r["kind"] for r in rows.values()} == {"divergence"}


def test_text_shows_the_meaning_of_each_field(plugin_site: Path) -> None:
    res = run_cli("dr-plugins", "--kind", "divergence", env={"PYTHONPATH": str(plugin_site)})
    assert res.returncode == 0, res.stderr
    assert "width = 2.0  (float, > 0): how wide the weights are" in res.stdout
    assert "plain = 3  (int)" in res.stdout


def test_builtin_nested_tables_show_their_keys() -> None:
    res = run_cli("dr-plugins", "--json", "--kind", "method")
    rows = {r["name"]: r for r in json.loads(res.stdout)["components"]}
    keys = [f["name"] for f in rows["diffratio"]["fields"]]
    assert "generator_optimizer" in keys and "generator_optimizer.lr" in keys


def test_an_unknown_kind_is_an_error_listing_the_kinds() -> None:
    res = run_cli("dr-plugins", "--kind", "divergnce")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "unknown --kind 'divergnce'" in res.stderr and "divergence" in res.stderr and "backbone" in res.stderr


def test_python_m_diffratio_help_lists_the_commands() -> None:
    res = subprocess.run([sys.executable, "-m", "diffratio", "-h"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    for command in ("train", "plugins", "sample", "eval", "dataset"):
        assert f"  {command} " in res.stdout
