"""GPU kernel profile of training steps for ``throughput.py --profile``: kernel time per category against the
wall time, the top kernels, and the chains of operations that launched the memory-bound kernels."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import torch

#: kernel categories of the profile, by a pattern of the CUDA kernel's name (first match wins)
KERNEL_CATEGORIES = (
    ("attention", re.compile(r"flash|fmha|attention|sdpa|cutlassF|cutlassB", re.I)),
    ("matrix products", re.compile(r"gemm|xmma|nvjet|cublas|cutlass|wgmma|matmul|splitk", re.I)),
    ("communication", re.compile(r"nccl", re.I)),
    ("optimiser", re.compile(r"multi_tensor|adam|foreach", re.I)),
    ("copies and casts", re.compile(r"memcpy|memset|copy_|to_copy|cast|catarray|cat_", re.I)),
    ("normalisation", re.compile(r"norm", re.I)),
    ("reductions", re.compile(r"reduce|sum_|mean|max|min", re.I)),
)


def kernel_category(name: str) -> str:
    """The category of a CUDA kernel by its name (see ``KERNEL_CATEGORIES``); 'other element-wise' when none
    matches (activations, modulation, adds: the memory-bound kernels)."""
    return next((label for label, pattern in KERNEL_CATEGORIES if pattern.search(name)), "other element-wise")


def kernel_breakdown(
    kernels: list[tuple[str, float, int]],
    wall_us: float,
    top: int = 15,
    sources: dict[str, list[tuple[str, float, int]]] | None = None,
) -> str:
    """Markdown of a profile: ``kernels`` as (name, total GPU microseconds, calls) over ``wall_us`` of wall time;
    the time per category with its share of the wall time, the idle share, then the ``top`` kernels, then for
    each category in ``sources`` its launch chains as (chain, GPU microseconds, kernels) (``launch_chains``)."""
    busy = sum(t for _, t, _ in kernels)
    by_cat: dict[str, list[float]] = {}
    for name, t, calls in kernels:
        acc = by_cat.setdefault(kernel_category(name), [0.0, 0])
        acc[0] += t
        acc[1] += calls
    lines = ["| category | GPU ms | share of wall time | kernel launches |", "|---|---|---|---|"]
    for cat, (t, calls) in sorted(by_cat.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"| {cat} | {t / 1e3:.1f} | {100 * t / wall_us:.1f}% | {int(calls):,} |")
    idle = max(0.0, wall_us - busy)
    lines.append(f"| (GPU idle: no kernel running) | {idle / 1e3:.1f} | {100 * idle / wall_us:.1f}% | |")
    lines += ["", f"Top {top} kernels by GPU time:", "", "| kernel | category | GPU ms | calls |", "|---|---|---|---|"]
    for name, t, calls in sorted(kernels, key=lambda k: -k[1])[:top]:
        short = name if len(name) <= 90 else name[:87] + "..."
        lines.append(f"| `{short.replace('|', '/')}` | {kernel_category(name)} | {t / 1e3:.1f} | {calls:,} |")
    for cat, chains in (sources or {}).items():
        if not chains:  # a CPU run, or no kernel of that category
            continue
        lines += [
            "",
            f"{cat.capitalize()}: kernels by the operations that launched them (top {top}):",
            "",
            "| launching op < its callers | GPU ms | kernels |",
            "|---|---|---|",
        ]
        lines += [f"| `{chain.replace('|', '/')}` | {t / 1e3:.1f} | {n:,} |" for chain, t, n in chains[:top]]
    return "\n".join(lines) + "\n"


#: prefix of the profiler's names of autograd nodes, dropped from launch chains
_AUTOGRAD_PREFIX = "autograd::engine::evaluate_function: "


def launch_chains(events: Any, category: str, depth: int = 4) -> list[tuple[str, float, int]]:
    """GPU time of the kernels of ``category`` grouped by the chain of operations that launched them, most
    first, as (chain, microseconds, kernels). ``events`` are a profile's CPU operations (``prof.events()``),
    each with the kernels it launched and its caller (``cpu_parent``); a chain is the launching op and up to
    ``depth - 1`` callers, innermost first, so a backward copy names its autograd node (``PermuteBackward0``)
    and a forward one the op that asked for it (``aten::contiguous``)."""
    acc: dict[str, list[float]] = {}
    for e in events:
        times = [k.duration for k in getattr(e, "kernels", None) or [] if kernel_category(k.name) == category]
        if not times:
            continue
        names, op = [], e
        while op is not None and len(names) < depth:
            names.append(op.name.removeprefix(_AUTOGRAD_PREFIX))
            op = op.cpu_parent
        entry = acc.setdefault(" < ".join(names), [0.0, 0])
        entry[0] += sum(times)
        entry[1] += len(times)
    return sorted(((chain, t, int(n)) for chain, (t, n) in acc.items()), key=lambda r: -r[1])


#: categories whose kernels ``--profile`` traces back to the operations that launched them
TRACED_CATEGORIES = ("copies and casts", "other element-wise")


def profile_steps(
    train_step: Callable[[], None], n: int, device: torch.device
) -> tuple[list[tuple[str, float, int]], float, dict[str, list[tuple[str, float, int]]]]:
    """Run ``n`` steps under ``torch.profiler``; return the CUDA kernels as (name, total microseconds, calls),
    the wall time in microseconds, and the launch chains of the ``TRACED_CATEGORIES`` (``launch_chains``)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(n):
            train_step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall_us = (time.perf_counter() - start) * 1e6
    events = prof.events()
    sources = {cat: launch_chains(events, cat) for cat in TRACED_CATEGORIES}
    return kernels_of(prof.key_averages(), DeviceType.CUDA), wall_us, sources


def kernels_of(averages: Any, cuda: Any) -> list[tuple[str, float, int]]:
    """(name, total microseconds, calls) of the GPU kernels among a profile's averaged events. GPU-side user
    annotations (``Optimizer.step#Adam.step``: a range over kernels already listed) are left out, so each
    microsecond of GPU time is counted once."""
    return [
        (e.key, float(e.self_device_time_total), int(e.count))
        for e in averages
        if e.device_type == cuda and e.self_device_time_total > 0 and not getattr(e, "is_user_annotation", False)
    ]
