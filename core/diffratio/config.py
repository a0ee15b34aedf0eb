"""Config fields as data: every recipe key carries its meaning and its bounds.

Component configs are frozen, kw_only attrs classes. Each field is declared with ``setting``, which
stores the one-line meaning in the field's metadata (``dr-plugins`` and the generated recipe reference
show it, for third-party plugins too) and turns bounds into validators, so that a recipe with
``lr = -1`` is refused when it is read, with the key's dotted path::

    @attrs.frozen(kw_only=True)
    class Config:
        lr: float = setting(1e-4, "learning rate", ge=0)
        mode: Literal["a", "b"] = setting("a", "how the thing is done: a or b")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

#: metadata key holding a field's one-line meaning
DOC = "doc"

_BOUNDS: dict[str, Callable[[Any], Any]] = {
    "ge": attrs.validators.ge,
    "gt": attrs.validators.gt,
    "le": attrs.validators.le,
    "lt": attrs.validators.lt,
}


def setting(default: Any = attrs.NOTHING, doc: str = "", *, factory: Callable[[], Any] | None = None,
            validator: Callable[..., Any] | Sequence[Callable[..., Any]] | None = None,
            converter: Callable[[Any], Any] | None = None, **bounds: float) -> Any:
    """An attrs field with its meaning ``doc`` and optional bounds (``ge``, ``gt``, ``le``, ``lt``).

    Bounds on an optional field (``float | None``) apply only to values that are not None.
    """
    unknown = set(bounds) - set(_BOUNDS)
    if unknown:
        raise TypeError(f"setting() got unknown bounds {sorted(unknown)}; use ge, gt, le or lt")
    checks = [_BOUNDS[name](value) for name, value in bounds.items()]
    if validator is not None:
        checks += list(validator) if isinstance(validator, Sequence) else [validator]
    combined = None
    if checks:
        combined = attrs.validators.optional(checks) if default is None else checks
    if factory is not None:
        return attrs.field(factory=factory, validator=combined, converter=converter, metadata={DOC: doc})
    return attrs.field(default=default, validator=combined, converter=converter, metadata={DOC: doc})


def field_doc(field: attrs.Attribute) -> str:
    """The meaning of a config field (empty when it has none)."""
    return str(field.metadata.get(DOC, ""))


__all__ = ["setting", "field_doc", "DOC"]
