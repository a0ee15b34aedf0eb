"""Strict TOML recipes: loading, ``--set`` overrides and structuring into component configs.

A recipe has a ``[run]`` table (``RunSettings``) and one table per component kind; a component table
names a registered component (``name = "dijs"``) and gives its config. Metrics and loggers are tables
of tables keyed by component name (``[metrics.energy-distance]``). Precedence: defaults < recipe <
``--set``. Every problem is collected and reported together, each with its dotted path.
"""

from __future__ import annotations

import json
import re
import tomllib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from diffratio.errors import RecipeError
from diffratio.registry import Registry, UnknownComponentError


@attrs.frozen(kw_only=True)
class RunSettings:
    """The ``[run]`` table: length, batch, seed and the intervals of a run."""

    name: str = "run"  # run directory name under runs/ unless --run-dir is given
    steps: int = 1000  # training iterations (generator updates for diffratio / vsd)
    batch_size: int = 256  # samples per step (generated and real each, on each rank)
    seed: int = 0  # seeds model initialisation, noise and data order
    log_every: int = 100  # steps between scalar logs and progress updates
    checkpoint_every: int = 1000  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    eval_every: int = 0  # steps between metric evaluations; 0 = only at the end
    sample_every: int = 0  # steps between sample grids / scatter plots; 0 = only at the end
    min_free_disk_gb: float = 1.0  # refuse to start when the run directory's disk has less free space
    # stop after this many steps in a row with a non-finite loss or gradient (each one is skipped)
    max_nonfinite_steps: int = attrs.field(default=20, validator=attrs.validators.ge(1))


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

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what run.json stores and --dry-run prints)."""
        out: dict[str, Any] = {"run": converter.unstructure(self.settings)}
        for table, comp in self.components.items():
            out[table] = {"name": comp.name, **converter.unstructure(comp.config)}
        for table, group in (("metrics", self.metrics), ("loggers", self.loggers)):
            out[table] = {name: converter.unstructure(c.config) for name, c in group.items()}
        return json.loads(json.dumps(out))  # plain JSON types (tuples become lists), as run.json stores it


# --------------------------------------------------------------------------------------------------
# A strict cattrs converter: no silent 64.9 -> 64, "false" -> True or 1 -> "1".
# --------------------------------------------------------------------------------------------------


def _strict(expected: type, accept: tuple[type, ...]) -> Any:
    def hook(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and expected is not bool:
            raise TypeError(f"expected {expected.__name__}, got a boolean ({value!r})")
        if not isinstance(value, accept):
            raise TypeError(f"expected {expected.__name__}, got {type(value).__name__} ({value!r})")
        return expected(value)

    return hook


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(int, _strict(int, (int,)))
    conv.register_structure_hook(float, _strict(float, (int, float)))
    conv.register_structure_hook(bool, _strict(bool, (bool,)))
    conv.register_structure_hook(str, _strict(str, (str,)))

    def structure_literal(value: Any, type_: Any) -> Any:
        choices = typing.get_args(type_)
        if value not in choices or type(value) is not type(choices[0]):
            raise ValueError(f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
        return value

    conv.register_structure_hook_func(lambda t: typing.get_origin(t) is typing.Literal, structure_literal)

    def structure_tuple(value: Any, type_: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected an array, got {type(value).__name__} ({value!r})")
        args = typing.get_args(type_)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(conv.structure(v, args[0]) for v in value)
        if len(args) != len(value):
            raise ValueError(f"expected an array of {len(args)} values, got {len(value)}")
        return tuple(conv.structure(v, a) for v, a in zip(value, args, strict=True))

    conv.register_structure_hook_func(lambda t: typing.get_origin(t) is tuple, structure_tuple)
    return conv


converter = _make_converter()


def _walk_errors(exc: BaseException, path: str, cls: type | None) -> list[str]:
    """Flatten cattrs' exception groups into ``dotted.path: message`` lines."""
    if isinstance(exc, ForbiddenExtraKeysError):
        known = ", ".join(f.name for f in attrs.fields(exc.cl)) if attrs.has(exc.cl) else ""
        return [f"{path}.{key}: unknown key" + (f" (known keys: {known})" if known else "")
                for key in sorted(exc.extra_fields)]
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        with_notes, others = exc.group_exceptions()
        lines: list[str] = []
        for sub, note in with_notes:
            name = getattr(note, "name", None)
            idx = getattr(note, "index", None)
            sub_path = f"{path}.{name}" if name is not None else f"{path}[{idx}]" if idx is not None else path
            lines += _walk_errors(sub, sub_path, None)
        for sub in others:
            lines += _walk_errors(sub, path, None)
        return lines
    if isinstance(exc, BaseExceptionGroup):
        return [line for sub in exc.exceptions for line in _walk_errors(sub, path, None)]
    if isinstance(exc, KeyError):
        return [f"{path}: required key {exc.args[0]!r} is missing"]
    if isinstance(exc, TypeError) and "missing" in str(exc) and "required" in str(exc):
        return [f"{path}: {exc}".replace("__init__() ", "")]
    msg = str(exc.args[0]) if exc.args else str(exc)
    table = _NOT_A_TABLE.match(msg) if isinstance(exc, AttributeError) else None
    if table:  # cattrs iterates a dict field's value with .items()
        return [f"{path}: expected a table ({{key = value, ...}}), got {table['type']}"]
    m = _ATTRS_VALIDATOR.match(msg)
    if m:  # attrs validators name the attribute inside the message: move it into the path
        return [f"{path}.{m['name']}: must {m['rule']}, got {m['value']}"]
    return [f"{path}: {msg}"]


_NOT_A_TABLE = re.compile(r"^'(?P<type>\w+)' object has no attribute 'items'$")
_ATTRS_VALIDATOR = re.compile(r"^'(?P<name>\w+)' must (?P<rule>.+?)(: | \(got )(?P<value>.*?)\)?$", re.S)


def _over_nested_defaults(data: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """A partial table for a field whose default is itself a config keeps that default's other values:
    ``generator_optimizer = { betas = [0, 0.9] }`` keeps the method's own default learning rate."""
    out = dict(data)
    if not attrs.has(cls):
        return out
    for f in attrs.fields(cls):
        given, default = out.get(f.name), f.default
        if isinstance(given, Mapping) and default is not attrs.NOTHING and attrs.has(type(default)):
            out[f.name] = _over_nested_defaults({**converter.unstructure(default), **given}, type(default))
    return out


def structure_config(data: Mapping[str, Any], cls: type, path: str) -> tuple[Any, list[str]]:
    """Structure ``data`` into ``cls`` strictly; returns (config or None, error lines)."""
    try:
        return converter.structure(_over_nested_defaults(data, cls), cls), []
    except Exception as exc:  # cattrs raises groups of many kinds; all become messages
        return None, _walk_errors(exc, path, cls)


# --------------------------------------------------------------------------------------------------
# Loading and --set
# --------------------------------------------------------------------------------------------------

_BARE = re.compile(r"^[A-Za-z_./~][A-Za-z0-9_./:+~-]*$")


def parse_set(item: str) -> tuple[list[str], Any]:
    """Parse ``dotted.key=value``; the value is a TOML literal (a bare word is taken as a string)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", key):
        raise RecipeError([f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. "
                           "--set run.steps=500 or --set divergence.name=kl"])
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if not _BARE.fullmatch(raw) or raw in ("true", "false"):
            raise RecipeError([f"--set {item!r}: {raw!r} is not a TOML value "
                               "(quote strings: --set run.name='\"my run\"')"]) from None
        value = raw
    return key.split("."), value


def apply_sets(doc: dict[str, Any], sets: Sequence[str]) -> list[str]:
    """Apply ``--set`` overrides to the raw recipe in place; returns errors."""
    errors: list[str] = []
    for item in sets:
        try:
            keys, value = parse_set(item)
        except RecipeError as exc:
            errors += exc.errors
            continue
        node = doc
        for i, k in enumerate(keys[:-1]):
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                errors.append(f"--set {item!r}: recipe.{'.'.join(keys[: i + 1])} is a value, not a table")
                break
            node = nxt
        else:
            if isinstance(node.get(keys[-1]), dict) and node.get(keys[-1]):
                # Switching the component of a table: only the name may be changed this way.
                errors.append(f"--set {item!r}: recipe.{'.'.join(keys)} is a table; set one of its keys")
            else:
                if keys[-1] == "name" and len(keys) == 2 and node.get("name") != value:
                    # A new component name invalidates the previous component's settings.
                    node.clear()
                node[keys[-1]] = value
    return errors


def read_recipe_text(path: str | Path) -> str:
    p = Path(path)
    if not p.exists():
        raise RecipeError([f"recipe file {str(p)!r} does not exist (recipes ship in recipes/, "
                           "e.g. dr-train recipes/toy2d.toml)"])
    if p.is_dir():
        raise RecipeError([f"recipe {str(p)!r} is a directory; give a .toml file"])
    return p.read_text()


def load_recipe(path: str | Path, sets: Sequence[str] = (), *, registry: Registry) -> Recipe:
    """Read, override and resolve a recipe; raises ``RecipeError`` listing every problem."""
    text = read_recipe_text(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError([f"{path}: not valid TOML: {exc}"]) from None
    return resolve_recipe(doc, sets, registry=registry, text=text, source=str(path))


def resolve_recipe(doc: dict[str, Any], sets: Sequence[str] = (), *, registry: Registry,
                   text: str = "", source: str = "<dict>") -> Recipe:
    """Resolve a parsed recipe document (see ``load_recipe``)."""
    errors = apply_sets(doc, sets)

    known = {"run", *SINGLE_TABLES, *MULTI_TABLES}
    for key in doc:
        if key not in known:
            errors.append(f"recipe.{key}: unknown table (known tables: {', '.join(sorted(known))})")

    run_table = doc.get("run", {})
    settings, errs = structure_config(run_table if isinstance(run_table, dict) else {}, RunSettings,
                                      "recipe.run")
    errors += errs

    components: dict[str, Resolved] = {}
    for table, default in SINGLE_TABLES.items():
        data = doc.get(table)
        if data is None and default is None:
            errors.append(f"recipe.{table}: missing table (add [{table}] with name = ...)")
            continue
        data = dict(data or {})
        name = data.pop("name", default)
        if not isinstance(name, str):
            errors.append(f"recipe.{table}.name: missing or not a string (a registered {table} name)")
            continue
        resolved = _resolve_one(registry, _kind_of(table), name, data, f"recipe.{table}", errors)
        if resolved is not None:
            components[table] = resolved

    groups: dict[str, dict[str, Resolved]] = {}
    for table, defaults in MULTI_TABLES.items():
        raw = doc.get(table, {})
        group: dict[str, Resolved] = {}
        if isinstance(raw, dict):
            raw = {**defaults, **raw}  # defaults stay on unless switched off with `name = false`
        if not isinstance(raw, dict):
            errors.append(f"recipe.{table}: expected a table of tables, e.g. [{table}.NAME]")
        else:
            for name, data in raw.items():
                if data is False:  # `[loggers] tensorboard = false` switches a default off
                    continue
                if not isinstance(data, dict):
                    errors.append(f"recipe.{table}.{name}: expected a table (or false to switch it off)")
                    continue
                r = _resolve_one(registry, MULTI_KIND[table], name, dict(data), f"recipe.{table}.{name}",
                                 errors)
                if r is not None:
                    group[name] = r
        groups[table] = group

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
                  loggers=groups["loggers"], text=text, sets=tuple(sets), source=source)


def _kind_of(table: str) -> str:
    return table  # single tables are named after their kind


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
