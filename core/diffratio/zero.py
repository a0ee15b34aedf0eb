"""Helpers for models whose parameters DeepSpeed ZeRO-3 may partition across ranks.

Under ZeRO-3 each rank holds an empty tensor per parameter and a shard of it; these helpers gather the
full values where code outside a forward pass needs them (parameter counts, an EMA update, a copy, an
export). Without ZeRO-3 they reduce to the plain operations, and DeepSpeed is never imported.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

_HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (their full size where DeepSpeed ZeRO-3 partitions them)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters() if p.requires_grad)


@contextmanager
def full_parameters(module: nn.Module, modify: bool = False) -> Iterator[nn.Module]:
    """``module`` with its full parameters, for use outside forward passes (an EMA update, a copy, export).

    Partitioned parameters are gathered on every rank and re-partitioned on exit (with ``modify``, the main
    rank's changes are kept). Every rank must enter the block together. Elsewhere this is a no-op.
    """
    with gathered(module.parameters(), modify):
        yield module


@contextmanager
def gathered(params: Iterable[nn.Parameter], modify: bool = False) -> Iterator[None]:
    """``full_parameters`` for a list of parameters (a caller that keeps its own list need not walk a module
    tree again): the partitioned ones among them are gathered inside the block; elsewhere a no-op."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed  # only ZeRO-3 parameters carry ds_id, so DeepSpeed is installed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0 if modify else None):
        yield


def plain_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with full, plain parameters and without the hooks DeepSpeed installs on
    the modules it manages; for an EMA or an exported network. Every rank must call it together."""
    with full_parameters(module):
        memo: dict[int, Any] = {}
        for p in module.parameters():  # ZeRO-3 parameters carry shards and handles: copy only the values
            if hasattr(p, "ds_id"):
                memo[id(p)] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        for m in module.modules():
            for attr in _HOOK_TABLES:
                hooks = getattr(m, attr, None)
                if hooks and any(_is_deepspeed(h) for h in hooks.values()):
                    memo[id(hooks)] = type(hooks)((k, copy.deepcopy(h, memo)) for k, h in hooks.items()
                                                  if not _is_deepspeed(h))
            if type(m._parameters) is not dict and any(id(p) in memo for p in m._parameters.values()):
                memo[id(m._parameters)] = {k: memo.get(id(p), p) for k, p in m._parameters.items()}
        return copy.deepcopy(module, memo)


def _is_deepspeed(hook: Any) -> bool:
    """Whether a module hook was installed by DeepSpeed (its function lives in a ``deepspeed`` module)."""
    return getattr(hook, "__module__", "").startswith("deepspeed")


__all__ = ["count_parameters", "full_parameters", "plain_copy"]
