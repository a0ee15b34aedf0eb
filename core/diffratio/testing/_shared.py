"""What every conformance check shares: the failure type, the reporter that names the component, seeding,
and the check of a component's ``Config``."""

from __future__ import annotations

import contextlib
import functools
import json
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor


class ConformanceError(AssertionError):
    """A component breaks a rule of its kind; the message names the component and the rule."""


class Reporter:
    """Prefixes every failure with the component's kind, registered name and class."""

    def __init__(self, kind: str, cls: type) -> None:
        name = cls.__dict__.get("registered_name") or ""
        where = f"{cls.__module__}.{cls.__qualname__}"
        self.label = f"{kind} {name!r} ({where})" if name else f"{kind} {where}"

    def fail(self, message: str) -> typing.NoReturn:
        raise ConformanceError(f"{self.label}: {message}")

    def require(self, condition: bool, message: str | Callable[[], str]) -> None:
        if not condition:
            self.fail(message() if callable(message) else message)

    def finite(self, t: Tensor, what: str) -> None:
        if not torch.is_tensor(t):
            self.fail(f"{what} is a {type(t).__name__}, expected a tensor")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = (~torch.isfinite(t)).sum().item()
            self.fail(f"{what} has {bad} non-finite value(s) of {t.numel()}")

    def shape(self, t: Tensor, expected: Sequence[int], what: str) -> None:
        self.require(tuple(t.shape) == tuple(expected),
                     lambda: f"{what} has shape {tuple(t.shape)}, expected {tuple(expected)}")


def names_component(kind: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Turn any other exception a check meets into a ``ConformanceError`` naming the component."""

    def decorate(check: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(check)
        def wrapper(cls: type, config: Any = None, **options: Any) -> None:
            try:
                check(cls, config, **options)
            except ConformanceError:
                raise
            except Exception as exc:
                raise ConformanceError(f"{Reporter(kind, cls).label}: {type(exc).__name__}: {exc}") from exc

        return wrapper

    return decorate


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block under ``torch.manual_seed(seed)`` without changing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield



def drop_none(data: Any) -> Any:
    """TOML has no null: a None value can only come from leaving the key out."""
    if isinstance(data, dict):
        return {k: drop_none(v) for k, v in data.items() if v is not None}
    return data


def check_config(cls: type, config: Any = None, *, kind: str = "component") -> Any:
    """Check ``cls.Config`` and return the config to build with (``config``, or the defaults)."""
    from diffratio.recipe import converter

    rep = Reporter(kind, cls)
    Config = getattr(cls, "Config", None)
    rep.require(Config is not None and attrs.has(Config), "Config must be an attrs class "
                "(@attrs.frozen(kw_only=True) class Config: ...)")
    try:
        hints = typing.get_type_hints(Config)
    except Exception as exc:  # an annotation naming something the module does not define
        rep.fail(f"the annotations of Config cannot be resolved: {type(exc).__name__}: {exc}")
    fields = attrs.fields(Config)
    untyped = [f.name for f in fields if f.name not in hints]
    rep.require(not untyped, f"Config fields without a type annotation: {untyped}")
    not_kw = [f.name for f in fields if not f.kw_only]
    rep.require(not not_kw, f"Config fields must be keyword-only (@attrs.frozen(kw_only=True)); not: {not_kw}")
    required = [f.name for f in fields if f.default is attrs.NOTHING]
    if config is None:
        rep.require(not required, f"Config has required fields {required}: pass config=Config(...) to the check")
        config = Config()
    rep.require(isinstance(config, Config), f"config is a {type(config).__name__}, expected {cls.__name__}.Config")
    probe = fields[0].name if fields else "_conformance_probe"
    try:
        setattr(config, probe, getattr(config, probe, None))
    except attrs.exceptions.FrozenInstanceError:
        pass
    else:
        rep.fail("Config must be frozen (@attrs.frozen): a recipe's settings may not change during a run")
    try:
        data = drop_none(json.loads(json.dumps(converter.unstructure(config))))
    except (TypeError, ValueError) as exc:
        rep.fail(f"Config does not unstructure to plain TOML/JSON values: {exc}")
    try:
        back = converter.structure(data, Config)
    except Exception as exc:
        rep.fail(f"Config does not structure back from {data!r}: {type(exc).__name__}: {exc}")
    rep.require(back == config, lambda: f"Config round trip changed it: {config!r} -> {data!r} -> {back!r}")
    return config


def check_stored_config(rep: Reporter, obj: Any, config: Any) -> None:
    rep.require(getattr(obj, "config", None) == config,
                "the component must keep its config as self.config (the engine and checkpoints read it)")

def state_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Names whose tensors differ (or exist in only one of the two state dicts)."""
    diff = sorted(set(a) ^ set(b))
    for k in set(a) & set(b):
        va, vb = a[k], b[k]
        if torch.is_tensor(va):
            if not (torch.is_tensor(vb) and va.shape == vb.shape and torch.equal(va, vb)):
                diff.append(k)
        elif va != vb:
            diff.append(k)
    return sorted(diff)


