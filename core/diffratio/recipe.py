"""Strict TOML recipes: loading, ``--set`` overrides and structuring into component configs.

A recipe has a ``[run]`` table (``RunSettings``) and one table per component kind; a component table
names a registered component (``name = "dijs"``) and gives its config. Metrics and loggers are tables
of tables keyed by component name (``[metrics.energy-distance]``). Precedence: defaults < recipe <
``--set``. Every problem is collected and reported together, each with its dotted path, before
anything is built or written.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from diffratio.config import setting
from diffratio.errors import RecipeError
from diffratio.registry import Registry, UnknownComponentError
from diffratio.structure import converter, structure_config


@attrs.frozen(kw_only=True)
class RunSettings:
    """The ``[run]`` table: length, batch, seed and the intervals of a run."""

    name: str = setting("run", "run directory name under runs/ unless --run-dir is given")
    steps: int = setting(1000, "loop steps; for diffratio / vsd the first warm-up steps update only the "
                               "auxiliary network", ge=1)
    batch_size: int = setting(256, "samples per step (generated and real each, on each rank)", ge=1)
    seed: int = setting(0, "seeds model initialisation, noise and data order", ge=0)
    log_every: int = setting(100, "steps between scalar logs and progress updates", ge=1)
    checkpoint_every: int = setting(1000, "steps between checkpoints (one is always written at the end)", ge=1)
    keep_checkpoints: int = setting(2, "newest checkpoints kept on disk; 0 keeps every one", ge=0)
    eval_every: int = setting(0, "steps between metric evaluations; 0 = only at the end", ge=0)
    sample_every: int = setting(0, "steps between sample grids / scatter plots; 0 = only at the end", ge=0)
    min_free_disk_gb: float = setting(1.0, "refuse to start when the run directory's disk has less free space "
                                      "(GB)", ge=0)
    max_nonfinite_steps: int = setting(20, "stop after this many steps in a row with a non-finite loss or "
                                       "gradient (each one is skipped)", ge=1)


#: Top-level tables holding a single component, with the default component name (None = required).
SINGLE_TABLES: dict[str, str | None] = {
    "method": None,
    "dataset": None,
    "backbone": None,
    "generator": "edm",
    "ratio": "classifier",
    "divergence": "dijs",
    "schedule": "lognormal",
    "strategy": "single",
}
#: Top-level tables of tables keyed by component name, with their defaults.
MULTI_TABLES: dict[str, dict[str, dict[str, Any]]] = {
    "metrics": {},
    "loggers": {"tensorboard": {}},
}
MULTI_KIND = {"metrics": "metric", "loggers": "logger"}
#: Tables a method may or may not use (``Method.uses``); the others are always needed.
OPTIONAL_TABLES = ("backbone", "generator", "ratio", "divergence", "schedule")

#: Settings that may change between a checkpoint and a resumed run without changing its meaning.
HARMLESS_ON_RESUME = re.compile(
    r"^(run\.(steps|log_every|checkpoint_every|keep_checkpoints|eval_every|sample_every|min_free_disk_gb"
    r"|max_nonfinite_steps)"
    r"|method\.verifier_sigma|metrics\..*|loggers\..*|strategy\.(threads|compile|timeout_minutes))$"
)


@attrs.frozen
class Resolved:
    """One resolved component: its kind, registered name, class and structured config."""

    kind: str
    name: str
    cls: type
    config: Any


@attrs.frozen
class Recipe:
    """A fully resolved recipe."""

    settings: RunSettings
    components: dict[str, Resolved]  # table name -> component ("method", "dataset", ...)
    metrics: dict[str, Resolved]
    loggers: dict[str, Resolved]
    text: str  # the original recipe file's text
    sets: tuple[str, ...]  # the --set overrides as given
    source: str  # recipe path
    #: what the ``--set`` overrides did beyond setting a key (settings dropped by a change of component)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what run.json stores and --dry-run prints)."""
        out: dict[str, Any] = {"run": converter.unstructure(self.settings)}
        for table, comp in self.components.items():
            out[table] = {"name": comp.name, **converter.unstructure(comp.config)}
        for table, group in (("metrics", self.metrics), ("loggers", self.loggers)):
            out[table] = {name: converter.unstructure(c.config) for name, c in group.items()}
        return json.loads(json.dumps(out))  # plain JSON types (tuples become lists), as run.json stores it


# --------------------------------------------------------------------------------------------------
# --set
# --------------------------------------------------------------------------------------------------

#: a value that is not TOML but is taken as a string as written (paths, component names)
_BARE = re.compile(r"^[A-Za-z_./~][A-Za-z0-9_./:+~-]*$")
SET_RULE = ("the value is read as TOML (3, 1e-4, true, [0.0, 0.99], \"text\" or 'text'); a value that is not "
            "TOML and is one word of letters, digits and _ . / : + ~ - that starts with a letter or one of "
            "_ . / ~ is taken as a string as written; any other string needs TOML quotes inside the shell's: "
            "--set run.name='\"my run\"'")


def parse_set(item: str) -> tuple[list[str], Any]:
    """Parse ``dotted.key=value`` (the value as ``SET_RULE`` says)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", key):
        raise RecipeError([f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. "
                           "--set run.steps=500 or --set divergence.name=kl"])
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if not _BARE.fullmatch(raw):
            raise RecipeError([f"--set {item!r}: {raw!r} is neither a TOML value nor a bare word; "
                               + SET_RULE]) from None
        value = raw
    return key.split("."), value


def _names_component(keys: list[str]) -> bool:
    return len(keys) == 2 and keys[0] in SINGLE_TABLES and keys[1] == "name"


def apply_sets(doc: dict[str, Any], sets: Sequence[str], notes: list[str] | None = None) -> list[str]:
    """Apply ``--set`` overrides to the raw recipe in place; returns errors.

    A component's ``name`` is applied before any other key, whatever the order given. Naming another
    component than the table's (the recipe's or the default) drops the recipe's other settings of that
    table, which belonged to the old component; ``notes`` receives a line naming them. ``[run]``, metrics
    and loggers are never dropped.
    """
    errors: list[str] = []
    parsed: list[tuple[str, list[str], Any]] = []
    for item in sets:
        try:
            parsed.append((item, *parse_set(item)))
        except RecipeError as exc:
            errors += exc.errors
    ordered = [p for p in parsed if _names_component(p[1])] + [p for p in parsed if not _names_component(p[1])]
    for item, keys, value in ordered:
        if _names_component(keys) and isinstance(doc.get(keys[0]), dict):
            _switch_component(doc[keys[0]], keys[0], value, item, notes)
            continue
        node = doc
        for i, k in enumerate(keys[:-1]):
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                errors.append(f"--set {item!r}: recipe.{'.'.join(keys[: i + 1])} is a value, not a table")
                break
            node = nxt
        else:
            current = node.get(keys[-1])
            switch_off = len(keys) == 2 and keys[0] in MULTI_TABLES and value is False
            if isinstance(current, dict) and current and not switch_off:
                errors.append(f"--set {item!r}: recipe.{'.'.join(keys)} is a table; set one of its keys")
            else:
                node[keys[-1]] = value
    return errors


def _switch_component(table: dict[str, Any], name: str, value: Any, item: str, notes: list[str] | None) -> None:
    old = table.get("name", SINGLE_TABLES[name])
    if old != value:
        dropped = {k: v for k, v in table.items() if k != "name"}
        table.clear()
        if dropped and notes is not None:
            settings = ", ".join(f"{k} = {json.dumps(v)}" for k, v in dropped.items())
            notes.append(f"--set {item}: the {name} changes from {old!r} to {value!r}, so the recipe's "
                         f"[{name}] settings for {old!r} are dropped: {settings}")
    table["name"] = value


# --------------------------------------------------------------------------------------------------
# Loading and resolving
# --------------------------------------------------------------------------------------------------


def read_recipe_text(path: str | Path) -> str:
    """The recipe file's text; a missing, unreadable or non-UTF-8 file is a ``RecipeError``."""
    p = Path(path)
    if not p.exists():
        raise RecipeError([f"recipe file {str(p)!r} does not exist (recipes ship in recipes/, "
                           "e.g. dr-train recipes/toy2d.toml)"])
    if p.is_dir():
        raise RecipeError([f"recipe {str(p)!r} is a directory; give a .toml file"])
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise RecipeError([f"recipe {str(p)!r} cannot be read: {exc.strerror or exc}"]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RecipeError([f"recipe {str(p)!r} is not UTF-8 text: byte {exc.start} (line {line}) is "
                           f"{data[exc.start:exc.start + 1]!r}; save the file as UTF-8"]) from None


def load_recipe(path: str | Path, sets: Sequence[str] = (), *, registry: Registry) -> Recipe:
    """Read, override and resolve a recipe; raises ``RecipeError`` listing every problem. What the
    overrides dropped (``Recipe.notes``) is printed on standard error."""
    text = read_recipe_text(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError([f"{path}: not valid TOML: {exc}"]) from None
    recipe = resolve_recipe(doc, sets, registry=registry, text=text, source=str(path))
    for note in recipe.notes:
        print(f"note: {note}", file=sys.stderr, flush=True)
    return recipe


def resolve_recipe(doc: dict[str, Any], sets: Sequence[str] = (), *, registry: Registry,
                   text: str = "", source: str = "<dict>") -> Recipe:
    """Resolve a parsed recipe document (see ``load_recipe``)."""
    notes: list[str] = []
    errors = apply_sets(doc, sets, notes)

    known = {"run", *SINGLE_TABLES, *MULTI_TABLES}
    for key in doc:
        if key not in known:
            errors.append(f"recipe.{key}: unknown table (known tables: {', '.join(sorted(known))})")

    run_table = doc.get("run", {})
    if not isinstance(run_table, dict):
        errors.append("recipe.run: expected a table ([run] with its keys)")
        run_table = {}
    settings, errs = structure_config(run_table, RunSettings, "recipe.run")
    errors += errs

    components: dict[str, Resolved] = {}
    for table, default in SINGLE_TABLES.items():
        data = doc.get(table)
        if data is None and default is None:
            errors.append(f"recipe.{table}: missing table (add [{table}] with name = ...)")
            continue
        if data is not None and not isinstance(data, dict):
            errors.append(f"recipe.{table}: expected a table ([{table}] with name = ...), got {data!r}")
            continue
        data = dict(data or {})
        name = data.pop("name", default)
        if not isinstance(name, str):
            errors.append(f"recipe.{table}.name: missing or not a string (a registered {table} name)")
            continue
        resolved = _resolve_one(registry, table, name, data, f"recipe.{table}", errors)
        if resolved is not None:
            components[table] = resolved

    groups = {table: _resolve_group(registry, table, doc.get(table, {}), errors) for table in MULTI_TABLES}

    method = components.get("method")
    if method is not None:
        for t in OPTIONAL_TABLES:
            if t not in method.cls.uses:
                components.pop(t, None)  # defaults of tables the method does not use are dropped
                if t in doc:
                    errors.append(f"recipe.{t}: the method {method.name!r} does not use a {t}; remove the table")

    if errors:
        raise RecipeError(errors)
    return Recipe(settings=settings, components=components, metrics=groups["metrics"],
                  loggers=groups["loggers"], text=text, sets=tuple(sets), source=source, notes=tuple(notes))


def _resolve_group(registry: Registry, table: str, raw: Any, errors: list[str]) -> dict[str, Resolved]:
    """A table of tables (metrics, loggers); its defaults stay on unless switched off with ``NAME = false``."""
    if not isinstance(raw, dict):
        errors.append(f"recipe.{table}: expected a table of tables, e.g. [{table}.NAME]")
        return {}
    group: dict[str, Resolved] = {}
    for name, data in {**MULTI_TABLES[table], **raw}.items():
        if data is False:
            continue
        if not isinstance(data, dict):
            errors.append(f"recipe.{table}.{name}: expected a table (or false to switch it off)")
            continue
        r = _resolve_one(registry, MULTI_KIND[table], name, dict(data), f"recipe.{table}.{name}", errors)
        if r is not None:
            group[name] = r
    return group


def _resolve_one(registry: Registry, kind: str, name: str, data: dict[str, Any], path: str,
                 errors: list[str]) -> Resolved | None:
    try:
        spec = registry.get(kind, name)
    except UnknownComponentError as exc:
        errors.append(f"{path}.name: {exc}" if kind not in ("metric", "logger") else f"{path}: {exc}")
        return None
    config, errs = structure_config(data, spec.cls.Config, path)
    errors += errs
    if errs:
        return None
    return Resolved(kind=kind, name=name, cls=spec.cls, config=config)


# --------------------------------------------------------------------------------------------------
# Comparing resolved configs
# --------------------------------------------------------------------------------------------------


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (for diffs of configs)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def meaningful_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Differences between two resolved configs that change what a checkpoint means."""
    a, b = flatten(old), flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") != b.get(key, "<unset>") and not HARMLESS_ON_RESUME.match(key):
            lines.append(f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
    return lines


__all__ = ["RunSettings", "Recipe", "Resolved", "load_recipe", "resolve_recipe", "apply_sets", "parse_set",
           "read_recipe_text", "structure_config", "converter", "flatten", "meaningful_changes", "SET_RULE",
           "SINGLE_TABLES", "MULTI_TABLES", "MULTI_KIND", "OPTIONAL_TABLES", "HARMLESS_ON_RESUME"]
