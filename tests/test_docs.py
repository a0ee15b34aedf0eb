"""The documentation stays true: docs/recipes.md is the fresh rendering of the registry and documents every
field, docs/cli.md is the fresh rendering of the click commands, docs/plugins.md shows the example plugin's
files exactly, and docs/tensorboard.md names every summary that tiny runs of the built-in methods write.
(tests/test_docs_commands.py runs the docs' shell commands.)"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest
import torch

import diffratio
from diffratio.config import config_fields, setting
from diffratio.engine import training_loop
from diffratio.recipe import load_recipe
from diffratio.registry import Provider, Registry

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLE = ROOT / "examples" / "diffratio-hellinger"


def _load_docgen() -> Any:
    """tools/docgen.py, the generator of docs/recipes.md and docs/cli.md (not part of the package)."""
    spec = importlib.util.spec_from_file_location("docgen", ROOT / "tools" / "docgen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["docgen"] = module
    spec.loader.exec_module(module)
    return module


docgen = _load_docgen()


# --------------------------------------------------------------------------------------------------
# docs/recipes.md
# --------------------------------------------------------------------------------------------------


def test_recipes_reference_is_current() -> None:
    fresh = docgen.render()
    current = (DOCS / "recipes.md").read_text()
    if current != fresh:
        changed = [f"  docs: {a!r}\n  code: {b!r}" for a, b in zip(current.splitlines(), fresh.splitlines(),
                                                                   strict=False) if a != b]
        pytest.fail(f"docs/recipes.md is stale: run `{docgen.COMMAND}`; first differences:\n" + "\n".join(changed[:5]))


def test_every_field_has_a_meaning() -> None:
    missing = docgen.missing_meanings()
    assert not missing, ("fields without a meaning (declare them with diffratio.config.setting(default, "
                         "\"meaning\")):\n" + "\n".join(missing))


def test_reference_covers_every_builtin_component_and_field() -> None:
    text = (DOCS / "recipes.md").read_text()
    registry = docgen.builtin_registry()
    for kind in docgen.TABLE_OF_KIND:
        for name in registry.names(kind):
            assert f"### `{name}`" in text, f"{kind} {name} is not in docs/recipes.md"
            for f in attrs.fields(registry.get(kind, name).cls.Config):
                assert f"| `{f.name}` |" in text, f"{kind} {name}: field {f.name} is not in docs/recipes.md"


@attrs.frozen(kw_only=True)
class _Documented:
    count: int = setting(1, "how many", ge=1)
    fraction: float = setting(0.5, "a share", ge=0, lt=1)
    mode: Literal["a", "b"] = setting("a", "how it is done")
    undocumented: int = 4


@attrs.frozen(kw_only=True)
class _Nested:
    inner: _Documented = setting(_Documented(count=7), "a nested table")
    pair: tuple[float, float] = setting((0.0, 0.99), "a pair")
    choice: str | None = setting(None, "optional")


def test_meanings_and_bounds_come_from_field_metadata() -> None:
    rows = {r.key: r for r in config_fields(_Documented)}
    assert {k: r.meaning for k, r in rows.items()} == {"count": "how many", "fraction": "a share",
                                                        "mode": "how it is done", "undocumented": ""}
    assert rows["fraction"].type_and_bounds == "float, >= 0, < 1"
    assert rows["mode"].type == 'one of "a", "b"'


def test_nested_tables_expand_with_the_defaults_of_the_field() -> None:
    rows = {r.key: r for r in config_fields(_Nested)}
    assert rows["inner"].type == "table (_Documented)" and rows["inner"].meaning == "a nested table"
    assert rows["inner.count"].default == "7"  # the field's default, not _Documented's own
    assert rows["inner.mode"].default == '"a"'
    assert rows["inner.undocumented"].meaning == ""
    assert (rows["pair"].type, rows["pair"].default) == ("array [float, float]", "[0.0, 0.99]")
    assert (rows["choice"].type, rows["choice"].default) == ("str (optional)", "unset")


class _Undocumented(diffratio.Divergence):
    @attrs.frozen(kw_only=True)
    class Config:
        alpha: float = 1.0
        beta: float = setting(1.0, "documented")

    def weight(self, f: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(f)


class _Plugin:
    @diffratio.hookimpl
    def diffratio_divergences(self) -> Any:
        yield diffratio.DivergenceSpec(name="undocumented", cls=_Undocumented, description="test")


def test_a_field_without_a_meaning_is_reported() -> None:
    registry = Registry()
    registry.register(_Plugin(), Provider("local", "local", "0"))
    registry.load(builtins=False, entry_points=False)
    missing = docgen.missing_meanings(registry)
    assert [m for m in missing if "undocumented" in m] == [
        f"[divergence] undocumented: alpha ({__name__}._Undocumented.Config)"]


def test_recipes_reference_states_path_and_set_rules() -> None:
    text = (DOCS / "recipes.md").read_text()
    assert "relative to the working directory" in text
    assert "--set run.name='\"my run\"'" in text


def test_generator_runs_as_a_script() -> None:
    res = subprocess.run([sys.executable, "tools/docgen.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout == (DOCS / "recipes.md").read_text()


# --------------------------------------------------------------------------------------------------
# docs/cli.md
# --------------------------------------------------------------------------------------------------


def test_cli_reference_is_current() -> None:
    fresh = docgen.render_cli()
    current = (DOCS / "cli.md").read_text()
    if current != fresh:
        changed = [f"  docs: {a!r}\n  code: {b!r}" for a, b in zip(current.splitlines(), fresh.splitlines(),
                                                                   strict=False) if a != b]
        pytest.fail(f"docs/cli.md is stale: run `{docgen.CLI_COMMAND}`; first differences:\n" + "\n".join(changed[:5]))


def test_cli_reference_covers_every_console_script_and_module_command() -> None:
    text = (DOCS / "cli.md").read_text()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert list(docgen.console_scripts()) == [n for n in docgen.SCRIPT_ORDER if n in scripts] + sorted(
        n for n in scripts if n not in docgen.SCRIPT_ORDER), "installed scripts differ from pyproject: pip install -e ."
    for name in scripts:
        assert f"## `{name}`" in text, f"{name} is not in docs/cli.md"
    for name in ("train", "plugins", "sample", "eval", "dataset"):
        assert f"| `python -m diffratio {name}` | `dr-{name}` |" in text


def test_generators_refuse_unknown_arguments() -> None:
    with pytest.raises(SystemExit, match="usage"):
        docgen.main(["bogus"])


# --------------------------------------------------------------------------------------------------
# Links between the pages
# --------------------------------------------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_relative_links_resolve() -> None:
    """Every relative Markdown link of the README and docs/ points to a file of the repository."""
    dead = []
    for page in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        for target in LINK.findall(page.read_text()):
            path = target.split("#")[0]
            if path and "://" not in path and not (page.parent / path).exists():
                dead.append(f"{page.relative_to(ROOT)}: {target}")
    assert not dead, "dead links:\n" + "\n".join(dead)


def test_index_lists_every_page() -> None:
    linked = set(LINK.findall((DOCS / "index.md").read_text()))
    missing = sorted(p.name for p in DOCS.glob("*.md") if p.name != "index.md" and p.name not in linked)
    assert not missing, f"docs/index.md does not link these pages: {missing}"


# --------------------------------------------------------------------------------------------------
# docs/plugins.md
# --------------------------------------------------------------------------------------------------

TITLED_BLOCK = re.compile(r'^```\w+ title="([^"]+)"\n(.*?)^```$', re.S | re.M)


def _example_files() -> set[str]:
    """The package's own files: no hidden files or folders, no build outputs."""
    def own(p: Path) -> bool:
        parts = p.relative_to(EXAMPLE).parts
        return p.is_file() and not any(x.startswith(".") or x in ("build", "__pycache__") or x.endswith(".egg-info")
                                       for x in parts)

    return {str(p.relative_to(ROOT)) for p in EXAMPLE.rglob("*") if own(p)}


def test_plugin_guide_shows_the_example_files_exactly() -> None:
    """Whoever writes the plugin anew from docs/plugins.md gets the package that CI installs and tests."""
    blocks = dict(TITLED_BLOCK.findall((DOCS / "plugins.md").read_text()))
    assert set(blocks) == _example_files(), "docs/plugins.md must show every file of examples/diffratio-hellinger"
    for path, text in blocks.items():
        assert text == (ROOT / path).read_text(), f"docs/plugins.md differs from {path}"


# --------------------------------------------------------------------------------------------------
# docs/tensorboard.md
# --------------------------------------------------------------------------------------------------

FAST = ["run.log_every=2", "run.checkpoint_every=4", "run.batch_size=32", "backbone.hidden=16", "backbone.depth=1",
        "dataset.num_points=500", "metrics.energy-distance.num_samples=100", "strategy.threads=1",
        "run.min_free_disk_gb=0.01"]


def _tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    text = {t.removesuffix("/text_summary") for t in tags["tensors"]}
    return set(tags["scalars"]) | set(tags["images"]) | text


def _train(recipe: str, run_dir: Path, *sets: str) -> set[str]:
    registry = docgen.builtin_registry()
    threads = torch.get_num_threads()
    try:
        training_loop(load_recipe(ROOT / "recipes" / recipe, [*FAST, *sets], registry=registry), run_dir, registry,
                      progress=False)
    finally:
        torch.set_num_threads(threads)  # strategy.threads=1 sets it for the process
    return _tags(run_dir)


@pytest.fixture(scope="module")
def written_tags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Tags of tiny runs of each built-in method (vsd's teacher is the edm run)."""
    tmp = tmp_path_factory.mktemp("tb")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "diffratio": _train("toy2d.toml", tmp / "diffratio", "run.steps=4", "method.warmup_ratio_steps=2",
                                "run.sample_every=2", "run.eval_every=2"),
            "edm": _train("toy2d-pretrain.toml", tmp / "edm", "run.steps=4", "method.sample_steps=2",
                          "method.optimizer.grad_clip=1.0"),
            "vsd": _train("toy2d-vsd.toml", tmp / "vsd", "run.steps=4", f"method.init={tmp / 'edm'}",
                          "method.warmup_fake_steps=1"),
        }


@pytest.mark.parametrize("method", ["diffratio", "edm", "vsd"])
def test_tensorboard_guide_names_every_summary(written_tags: dict[str, Any], method: str) -> None:
    text = (DOCS / "tensorboard.md").read_text()
    tags = written_tags[method]
    assert {"samples", "config", "images_per_second"} <= tags  # the run wrote what the guide promises
    undocumented = sorted(t for t in tags if f"`{t}`" not in text)
    assert not undocumented, f"{method} writes summaries docs/tensorboard.md does not name: {undocumented}"
