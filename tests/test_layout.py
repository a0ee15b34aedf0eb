"""Layout rules of design.md: built-in plugins use only the public diffratio API; nothing heavy at import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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
