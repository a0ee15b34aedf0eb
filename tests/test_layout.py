"""Layout rules of design.md: built-in plugins use only the public diffratio API; nothing heavy at import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import diffratio

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
    return out


def test_builtins_import_only_public_api() -> None:
    offenders = []
    for path in (ROOT / "plugins" / "diffratio_builtins").rglob("*.py"):
        for mod in imported_modules(path):
            parts = mod.split(".")
            if parts[0] == "diffratio" and any(p.startswith("_") for p in parts[1:]):
                offenders.append(f"{path.relative_to(ROOT)}: {mod}")
            if parts[0] in ("core", "plugins"):
                offenders.append(f"{path.relative_to(ROOT)}: {mod} (source roots are not packages)")
    assert not offenders, offenders


#: the diffratio modules a plugin may import (docs/architecture.md, "The public API for plugin authors")
PUBLIC = {"diffratio", "diffratio.config", "diffratio.losses", "diffratio.edm", "diffratio.analytic",
          "diffratio.attention", "diffratio.inference", "diffratio.verifier", "diffratio.dataset_tool",
          "diffratio.visualize", "diffratio.recipe", "diffratio.cli", "diffratio.fid", "diffratio.devices",
          "diffratio.idx", "diffratio.longjob"}
#: imported only for annotations (inside ``if TYPE_CHECKING:``)
TYPES_ONLY = {"diffratio.engine", "diffratio.registry"}


def _type_checking_imports(tree: ast.AST) -> set[int]:
    """Ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def test_builtins_import_only_the_documented_plugin_api() -> None:
    assert "`diffratio.inference`" in (ROOT / "docs" / "architecture.md").read_text()
    offenders = []
    for path in (ROOT / "plugins" / "diffratio_builtins").rglob("*.py"):
        tree = ast.parse(path.read_text())
        typing_only = _type_checking_imports(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module == "diffratio":  # names, or submodules
                mods = [a.name if a.name in diffratio.__all__ else f"diffratio.{a.name}" for a in node.names]
                mods = ["diffratio" if m in diffratio.__all__ else m for m in mods]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                if mod.split(".")[0] != "diffratio" or mod in PUBLIC:
                    continue
                if mod in TYPES_ONLY and id(node) in typing_only:
                    continue
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {mod}")
    assert not offenders, offenders


def test_core_does_not_import_builtins_except_registry() -> None:
    for path in (ROOT / "core" / "diffratio").rglob("*.py"):
        mods = imported_modules(path)
        assert not any(m.startswith("diffratio_builtins") for m in mods), path


def test_importing_diffratio_loads_no_plugins_and_no_optional_packages() -> None:
    code = ("import sys, diffratio; "
            "bad = [m for m in ('diffratio_builtins', 'deepspeed', 'xformers', 'tensorboard') if m in sys.modules];"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
