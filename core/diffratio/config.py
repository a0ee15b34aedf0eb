"""Config fields as data: every recipe key carries its meaning and its bounds.

Component configs are frozen, kw_only attrs classes. Each field is declared with ``setting``, which
stores the one-line meaning in the field's metadata (``dr-plugins`` and the generated recipe reference
show it, for third-party plugins too) and turns bounds into validators, so that a recipe with
``lr = -1`` is refused when it is read, with the key's dotted path::

    @attrs.frozen(kw_only=True)
    class Config:
        lr: float = setting(1e-4, "learning rate", ge=0)
        mode: Literal["a", "b"] = setting("a", "how the thing is done: a or b")

Structuring recipe data into configs and turning cattrs' structured errors into ``dotted.path: problem``
lines live in ``diffratio.structure``; describing fields for people (types, defaults) lives here.
"""

from __future__ import annotations

import json
import operator
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

import attrs

#: metadata key holding a field's one-line meaning
DOC = "doc"
#: metadata key holding a field's bounds, e.g. ``{"ge": 1}``
BOUNDS = "bounds"
#: metadata key: False for a setting that leaves the parameters' names and shapes unchanged
STRUCTURAL = "structural"

_OPS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "ge": (operator.ge, ">="),
    "gt": (operator.gt, ">"),
    "le": (operator.le, "<="),
    "lt": (operator.lt, "<"),
}


@attrs.frozen
class Bound:
    """A validator ``value <op> limit`` whose message leaves the key to the error's dotted path."""

    op: str
    limit: float

    def __call__(self, _instance: Any, _attribute: attrs.Attribute, value: Any) -> None:
        if not self.holds(value):
            raise ValueError(f"must be {_OPS[self.op][1]} {self.limit}, got {value!r}")

    def holds(self, value: Any) -> bool:
        """Whether ``value`` keeps the bound (None, an unset optional value, always does)."""
        return value is None or bool(_OPS[self.op][0](value, self.limit))

    def __str__(self) -> str:
        return f"{_OPS[self.op][1]} {self.limit}"


def setting(default: Any = attrs.NOTHING, doc: str = "", *, factory: Callable[[], Any] | None = None,
            validator: Callable[..., Any] | Sequence[Callable[..., Any]] | None = None,
            converter: Callable[[Any], Any] | None = None, structural: bool = True,
            **bounds: float) -> Any:
    """An attrs field with its meaning ``doc`` and optional bounds (``ge``, ``gt``, ``le``, ``lt``).

    Bounds on an optional field (``float | None``) apply only to values that are not None.
    ``structural=False`` marks a backbone setting that leaves the parameters' names and shapes as they
    are (an attention backend, dropout): a run initialised from another (``method.init``) may change it.
    """
    unknown = set(bounds) - set(_OPS)
    if unknown:
        raise TypeError(f"setting() got unknown bounds {sorted(unknown)}; use ge, gt, le or lt")
    checks: list[Callable[..., Any]] = [Bound(name, limit) for name, limit in bounds.items()]
    if validator is not None:
        checks += list(validator) if isinstance(validator, Sequence) else [validator]
    combined = None
    if checks:
        combined = attrs.validators.optional(checks) if default is None else checks
    metadata = {DOC: doc, BOUNDS: dict(bounds), STRUCTURAL: structural}
    if factory is not None:
        return attrs.field(factory=factory, validator=combined, converter=converter, metadata=metadata)
    return attrs.field(default=default, validator=combined, converter=converter, metadata=metadata)


def empty_is_none(value: Any) -> Any:
    """Converter of an optional text setting: ``""`` is None, so that ``--set key=""`` unsets what a recipe
    sets (TOML has no null)."""
    return None if value == "" else value


def field_doc(field: attrs.Attribute) -> str:
    """The meaning of a config field (empty when it has none)."""
    return str(field.metadata.get(DOC, ""))


def field_bounds(field: attrs.Attribute) -> list[Bound]:
    """The bounds a field was declared with (``setting(..., ge=1)``)."""
    return [Bound(op, limit) for op, limit in field.metadata.get(BOUNDS, {}).items()]


def is_structural(field: attrs.Attribute) -> bool:
    """Whether a setting changes a network's parameters (names or shapes); True unless declared otherwise."""
    return bool(field.metadata.get(STRUCTURAL, True))


# --------------------------------------------------------------------------------------------------
# Fields described as a recipe author writes them
# --------------------------------------------------------------------------------------------------


@attrs.frozen
class FieldDoc:
    """One documented key of a config (nested tables give dotted keys)."""

    key: str
    type: str
    default: str  # as TOML spells it, "required" or "see below" (a nested table)
    meaning: str
    value: Any = None  # the default itself (attrs.NOTHING when required)
    bounds: str = ""  # e.g. ">= 0, < 1"

    @property
    def type_and_bounds(self) -> str:
        return f"{self.type}, {self.bounds}" if self.bounds else self.type


def type_name(tp: Any) -> str:
    """``int``, ``array of int``, ``one of "a", "b"``, ``int (optional)``, ``table``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = " or ".join(type_name(a) for a in rest)
        return f"{inner} (optional)" if len(rest) < len(args) else inner
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"array of {type_name(args[0])}"
        return "array [" + ", ".join(type_name(a) for a in args) + "]"
    if tp is typing.Any:
        return "any"
    if origin is dict or tp is dict or attrs.has(tp):
        return "table"
    return getattr(tp, "__name__", str(tp))


def toml_value(value: Any) -> str:
    """A value as TOML would spell it (None: the key is left out, shown as ``unset``)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    if attrs.has(type(value)):
        items = (f"{f.name} = {toml_value(getattr(value, f.name))}" for f in attrs.fields(type(value)))
        return "{ " + ", ".join(items) + " }"
    return repr(value)


def default_of(field: attrs.Attribute) -> Any:
    """A field's default value (a factory's product), or ``attrs.NOTHING`` when it is required."""
    d = field.default
    if isinstance(d, attrs.Factory):  # type: ignore[arg-type]
        return d.factory()
    return d


def config_fields(config_cls: type, prefix: str = "") -> list[FieldDoc]:
    """Every key of a Config class; a nested attrs table adds its own keys as ``field.key`` rows, with the
    defaults of the enclosing field's default (not the nested class's own)."""
    hints = typing.get_type_hints(config_cls)
    rows: list[FieldDoc] = []
    for f in attrs.fields(config_cls):
        tp = hints[f.name]
        default = default_of(f)
        key = prefix + f.name
        required = default is attrs.NOTHING
        bounds = ", ".join(str(b) for b in field_bounds(f))
        if attrs.has(tp):
            rows.append(FieldDoc(key, f"table ({tp.__name__})", "required" if required else "see below",
                                 field_doc(f), default))
            for sub in config_fields(tp, key + "."):
                if not required:  # the component's default for this table, key by key
                    value = getattr(default, sub.key.rsplit(".", 1)[1])
                    sub = attrs.evolve(sub, default=toml_value(value), value=value)
                rows.append(sub)
            continue
        rows.append(FieldDoc(key, type_name(tp), "required" if required else toml_value(default), field_doc(f),
                             default, bounds))
    return rows


__all__ = ["setting", "empty_is_none", "field_doc", "field_bounds", "is_structural", "Bound", "FieldDoc",
           "config_fields", "type_name", "toml_value", "default_of", "DOC", "BOUNDS", "STRUCTURAL"]
