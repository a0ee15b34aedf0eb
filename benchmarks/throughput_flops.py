"""FLOPs and MFU for ``throughput.py``: the FLOPs of one training step as the model's (attention on sdpa,
whose ops the counter sees, and no activation checkpointing recomputation), and the card's dense bf16 peak
that MFU divides by."""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from diffratio import Backbone, Trainable

#: dense bf16 peak of one card, by a substring of torch.cuda.get_device_name()
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def networks(method: Any) -> list[nn.Module]:
    """The plain modules a method trains or evaluates (its attributes: modules and Trainables)."""
    out = []
    for value in vars(method).values():
        if isinstance(value, Trainable):
            out.append(value.model)
        elif isinstance(value, nn.Module):
            out.append(value)
    return out


@contextmanager
def sdpa_attention(method: Any) -> Any:
    """Attention blocks of the built-in backbones on sdpa for the FLOP count (the counter does not see xformers'
    ops); restored afterwards."""
    changed = [
        (m, m.attn_backend)
        for net in networks(method)
        for m in net.modules()
        if getattr(m, "attn_backend", "sdpa") != "sdpa"
    ]
    for m, _ in changed:
        m.attn_backend = "sdpa"
    try:
        yield
    finally:
        for m, backend in changed:
            m.attn_backend = backend


@contextmanager
def without_recompute(method: Any) -> Any:
    """Activation checkpointing off for the FLOP count (``backbone.activation_checkpointing``): MFU counts the
    model's FLOPs, not the recomputation the step time pays for; restored afterwards."""
    changed = [m for net in networks(method) for m in net.modules() if isinstance(m, Backbone) and m.checkpoint_blocks]
    for m in changed:
        m.checkpoint_blocks = False
    try:
        yield
    finally:
        for m in changed:
            m.checkpoint_blocks = True


def count_flops(step: Callable[[], Any], method: Any) -> float | None:
    """FLOPs of one call of ``step`` (forward and backward, without activation checkpointing's recomputation),
    or None when they cannot be counted."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with sdpa_attention(method), without_recompute(method), FlopCounterMode(display=False) as counter:
            step()
    except Exception as exc:  # e.g. a compiled module the counter cannot enter
        print(f"FLOPs not counted: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """Dense bf16 peak of one card and the card's name."""
    if device.type != "cuda":
        return override, platform.processor() or "cpu"
    name = torch.cuda.get_device_name(device)
    if override:
        return override, name
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None), name
