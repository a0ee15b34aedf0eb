"""How the ranks of a run agree: work done by the main rank alone, and phases every rank must pass together."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from diffratio.components import Strategy
from diffratio.errors import DiffRatioError

T = TypeVar("T")


def on_main(strategy: Strategy, fn: Callable[[], T]) -> T:
    """Run ``fn`` on the main rank only and hand its (picklable) result to every rank; when it raises, every
    rank raises (the main rank its own error, the others a ``DiffRatioError`` quoting it)."""
    result: T | None = None
    error: Exception | None = None
    if strategy.is_main:
        try:
            result = fn()
        except Exception as exc:  # every rank must leave the broadcast below, whatever went wrong
            error = exc
    if strategy.world_size > 1:
        result, message = strategy.broadcast_object((result, None if error is None else str(error)))
        if message is not None and error is None:
            raise DiffRatioError(f"stopped because the main rank (rank 0) failed: {message}")
    if error is not None:
        raise error
    return result  # type: ignore[return-value]


def agree(strategy: Strategy, phase: Callable[[], T]) -> tuple[T | None, Exception | None, bool]:
    """Run ``phase`` on every rank and agree whether it failed anywhere (one collective with several ranks).

    Returns ``(result, own error, failed on some rank)``; the caller decides how to fail, on every rank alike.
    """
    try:
        return phase(), None, bool(strategy.max_over_ranks([0])[0])
    except Exception as exc:  # decided together with the other ranks
        strategy.max_over_ranks([1])
        return None, exc, True
