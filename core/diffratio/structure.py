"""Recipe data into config classes, strictly, with every problem reported at its dotted path.

The converter accepts no silent conversions (no ``64.9 -> 64``, ``"false" -> True`` or ``1 -> "1"``) and
no unknown keys. A config class is built with its validators held back, then each field is validated on
its own, so that every bad value of a table is reported, not only the first. Error lines come from
cattrs' structured exceptions (``ClassValidationError`` and ``IterableValidationError`` with their
``.exceptions`` and the notes naming each attribute or index), never from the text of a message.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from diffratio.config import field_bounds


class NotATable(TypeError):
    """A table was expected (``{key = value, ...}``) and another value was given."""

    def __init__(self, value: Any) -> None:
        super().__init__(f"expected a table ({{key = value, ...}}), got {type(value).__name__}")


def _strict(expected: type, accept: tuple[type, ...]) -> Any:
    def hook(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and expected is not bool:
            raise TypeError(f"expected {expected.__name__}, got a boolean ({value!r})")
        if not isinstance(value, accept):
            raise TypeError(f"expected {expected.__name__}, got {type(value).__name__} ({value!r})")
        return expected(value)

    return hook


@contextmanager
def _validators_held_back() -> Iterator[None]:
    before = attrs.validators.get_disabled()
    attrs.validators.set_disabled(True)
    try:
        yield
    finally:
        attrs.validators.set_disabled(before)


def _noted(exc: Exception, name: str, type_: Any) -> Exception:
    exc.add_note(AttributeValidationNote(f"Validating attribute {name}", name, type_))
    return exc


def _attrs_hook(cl: type, conv: cattrs.Converter) -> Any:
    """Structure an attrs class: types first (cattrs, every field), then each field's validators."""
    base = make_dict_structure_fn(cl, conv)

    def structure(value: Any, _type: Any) -> Any:
        if not isinstance(value, Mapping):
            raise NotATable(value)
        try:
            with _validators_held_back():
                obj = base(value, cl)
        except ClassValidationError as exc:  # add the bound violations of the fields that structured
            failed = {getattr(n, "name", None) for e in exc.exceptions for n in getattr(e, "__notes__", [])}
            extra = list(_bound_errors(cl, conv, value, failed))
            if extra:
                raise ClassValidationError(exc.message, [*exc.exceptions, *extra], cl) from None
            raise
        errors = []
        for f in attrs.fields(cl):
            if f.validator is not None and f.init:
                try:
                    f.validator(obj, f, getattr(obj, f.name))
                except (ValueError, TypeError) as err:
                    errors.append(_noted(err, f.name, f.type))
        if errors:
            raise ClassValidationError(f"While validating {cl.__name__}", errors, cl)
        return obj

    return structure


def _bound_errors(cl: type, conv: cattrs.Converter, value: Mapping[str, Any], skip: set[Any]) -> Iterator[Exception]:
    """The declared bounds that given values break, for fields that structured on their own."""
    for f in attrs.fields(attrs.resolve_types(cl)):
        key = f.alias or f.name
        if key in skip or key not in value or not field_bounds(f):
            continue
        try:
            v = conv.structure(value[key], f.type)
        except Exception:  # reported by cattrs already
            continue
        for bound in field_bounds(f):
            if v is not None and not bound.holds(v):
                yield _noted(ValueError(f"must be {bound}, got {v!r}"), key, f.type)


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
            args = (args[0],) * len(value)
        elif len(args) != len(value):
            raise ValueError(f"expected an array of {len(args)} values, got {len(value)}")
        out, errors = [], []
        for i, (v, a) in enumerate(zip(value, args, strict=True)):
            try:
                out.append(conv.structure(v, a))
            except Exception as exc:  # each element's problem, at its index
                exc.add_note(IterableValidationNote(f"Structuring {type_} @ index {i}", i, a))
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {type_}", errors, type_)
        return tuple(out)

    conv.register_structure_hook_func(lambda t: typing.get_origin(t) is tuple, structure_tuple)

    def structure_dict(value: Any, type_: Any) -> Any:
        if not isinstance(value, Mapping):
            raise NotATable(value)
        kt, vt = typing.get_args(type_) or (Any, Any)
        return {conv.structure(k, kt): conv.structure(v, vt) for k, v in value.items()}

    conv.register_structure_hook_func(lambda t: t is dict or typing.get_origin(t) is dict, structure_dict)
    conv.register_structure_hook_factory(attrs.has, lambda cl: _attrs_hook(cl, conv))
    return conv


converter = _make_converter()


def error_lines(exc: BaseException, path: str) -> list[str]:
    """Flatten cattrs' exception groups into ``dotted.path: problem`` lines."""
    if isinstance(exc, ForbiddenExtraKeysError):
        known = ", ".join(f.alias or f.name for f in attrs.fields(exc.cl)) if attrs.has(exc.cl) else ""
        return [f"{path}.{key}: unknown key" + (f" (known keys: {known})" if known else "")
                for key in sorted(exc.extra_fields)]
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        with_notes, others = exc.group_exceptions()
        lines: list[str] = []
        for sub, note in with_notes:
            name, idx = getattr(note, "name", None), getattr(note, "index", None)
            sub_path = f"{path}.{name}" if name is not None else f"{path}[{idx}]" if idx is not None else path
            lines += error_lines(sub, sub_path)
        for sub in others:
            lines += error_lines(sub, path)
        return lines
    if isinstance(exc, BaseExceptionGroup):
        return [line for sub in exc.exceptions for line in error_lines(sub, path)]
    if isinstance(exc, KeyError):  # cattrs' note puts the missing key's name into the path
        return [f"{path}: required, but not given"]
    return [f"{path}: {exc}"]


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
        return None, error_lines(exc, path)
