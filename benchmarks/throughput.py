"""Training throughput of ``diffratio`` and ``vsd`` with the same generator, data and batch: images/s, the step
time split into the auxiliary step (ratio estimator / fake score) and the generator step, peak GPU memory,
FLOPs per step and MFU. Prints a markdown table and writes it to ``--out``.

    python benchmarks/throughput.py recipes/imagenet512.toml --steps 20 \
        --set dataset.name=synthetic-latents --set strategy.name=single --set strategy.precision=bf16 \
        --variant 'sdpa: backbone.attention=sdpa' --variant 'xformers: backbone.attention=xformers' \
        --out docs/results/throughput.md

Each row (a method under a variant) builds the run as ``dr-train`` does (``engine.build_run``) from the recipe
with the ``--set`` overrides, then the variant's, and calls ``method.train_step`` with the engine's per-step
finite check (``guard.NonFiniteGuard``: scalars kept on the device, read once per window), as the training
loop does: ``--warmup`` steps, one step under
``torch.utils.flop_counter.FlopCounterMode``, then ``--steps`` timed steps. The recipe's method table is
mapped onto the other method (generator and auxiliary optimisers, steps per generator step); ``method.init``
is cleared (weights do not change the speed: the VSD teacher is an untrained ``edm`` export) and warm-up steps
are off.

Times: CUDA events around ``aux_step`` (ratio estimator / fake score) and ``generator_step`` (perf_counter on CPU); the
step time is wall time over the timed steps, so "other" is the finite check and gaps (each method's EMA
update is inside its generator step). MFU =
counted FLOPs per step / step time / the card's dense bf16 peak (H100 SXM and H200: 989 TFLOP/s; or
``--peak-tflops``), per GPU. FLOPs are counted with the sdpa kernels even for rows on xformers (whose ops the
counter does not see), so MFU compares backends on the same model FLOPs; likewise with activation
checkpointing off (the recomputation is not model FLOPs, though the step time pays for it).

With ``--profile DIR``, each row then runs ``--profile-steps`` more steps under ``torch.profiler`` and writes
``DIR/VARIANT-METHOD.md``: GPU kernel time per category (matrix products, attention, normalisation and other
element-wise kernels, optimiser, copies, communication) against the wall time, the top kernels, and for the
memory-bound categories (copies and casts, other element-wise) the chains of operations that launched their
kernels (``aten::copy_ < aten::clone < aten::contiguous < PermuteBackward0``: the launching op first, then its
callers); this is where an MFU below target is explained.

Each row runs in a fresh Python process (peak memory of that row alone; an out-of-memory row is reported, not
fatal), unless ``--no-isolate`` or under torchrun (``WORLD_SIZE`` > 1), where rows run in turn in-process on
every rank and rank 0 reports images/s over all ranks.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from diffratio import Backbone, Trainable
from diffratio.edm import EDMDenoiser
from diffratio.engine import build_run
from diffratio.guard import NonFiniteGuard
from diffratio.inference import EXPORT_FORMAT
from diffratio.recipe import apply_sets, read_recipe_text, resolve_recipe
from diffratio.registry import default_registry

METHODS = ("diffratio", "vsd")
#: the line of a traceback that names the exception, e.g. "torch.OutOfMemoryError: CUDA out of memory"
EXCEPTION_LINE = re.compile(r"\b\w+(Error|Exception)\b: ")
#: dense bf16 peak of one card, by a substring of torch.cuda.get_device_name()
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}
COLUMNS = ("variant", "method", "batch", "images/s", "step ms", "aux step ms", "generator step ms", "other ms",
           "peak GiB", "TFLOP/step", "TFLOP/s", "MFU", "params (M)")


# --------------------------------------------------------------------------------------------------
# Recipes for the rows
# --------------------------------------------------------------------------------------------------


def method_table(source: dict[str, Any], name: str) -> dict[str, Any]:
    """The ``[method]`` table of ``name`` from a diffratio or vsd table: same generator optimiser, the auxiliary
    network's optimiser and steps per generator step carried over, no initialisation, no warm-up."""
    aux_opt = source.get("ratio_optimizer", source.get("fake_optimizer"))
    aux_steps = source.get("ratio_steps", source.get("fake_steps"))
    out: dict[str, Any] = {"name": name}
    if name == "vsd":
        out["init"] = "untrained-teacher.pt"  # replaced by random_teacher's file in measure
    if "generator_optimizer" in source:
        out["generator_optimizer"] = source["generator_optimizer"]
    if "ema_decay" in source:
        out["ema_decay"] = source["ema_decay"]
    prefix = "ratio" if name == "diffratio" else "fake"
    if aux_opt is not None:
        out[f"{prefix}_optimizer"] = aux_opt
    if aux_steps is not None:
        out[f"{prefix}_steps"] = aux_steps
    out[f"warmup_{prefix}_steps"] = 0
    return out


def random_teacher(resolved: Any, folder: Path) -> Path:
    """An export of an untrained ``edm`` run with the row's backbone and data, the VSD teacher of a row (its
    weights do not change the speed); ``load_pretrained_denoiser`` reads it like a trained one."""
    comps = resolved.components
    data = comps["dataset"].cls(comps["dataset"].config)
    b = comps["backbone"]
    backbone = b.cls(b.config, data_shape=data.data_shape, num_labels=data.num_labels, mode="full")
    denoiser = EDMDenoiser(backbone, sigma_data=data.sigma_data)
    path = folder / "untrained-teacher.pt"
    torch.save({"format": EXPORT_FORMAT, "config": {"method": {"name": "edm"}}, "step": 0,
                "data": {"data_shape": list(data.data_shape), "num_labels": data.num_labels,
                         "sigma_data": float(data.sigma_data)},
                "weights": {"denoiser": denoiser.state_dict()}}, path)
    return path


def row_recipe(recipe: str, sets: list[str], method: str) -> Any:
    """The resolved recipe of one row: the file, the ``--set`` list, the method mapped to ``method``, no
    loggers or metrics."""
    doc = tomllib.loads(read_recipe_text(recipe))
    errors = apply_sets(doc, sets)
    if errors:
        raise SystemExit("bad --set: " + "; ".join(errors))
    source = doc.get("method", {})
    if source.get("name") not in METHODS:
        raise SystemExit(f"{recipe}: the recipe's method is {source.get('name')!r}; give a diffratio or vsd recipe")
    doc["method"] = method_table(source, method)
    if method == "vsd":
        doc.pop("ratio", None)
        doc.pop("divergence", None)
    doc["metrics"] = {}
    doc["loggers"] = {"tensorboard": False}
    return resolve_recipe(doc, registry=default_registry(), text="", source=recipe)


# --------------------------------------------------------------------------------------------------
# Measuring one row
# --------------------------------------------------------------------------------------------------


class PhaseTimer:
    """Time spent in named method calls: CUDA events on GPU (read once, at the end), perf_counter on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.spans: dict[str, list[tuple[Any, Any]]] = {}

    def wrap(self, obj: Any, attr: str, label: str) -> None:
        """Replace the bound method ``obj.attr`` on the instance by a timed call of it."""
        fn = getattr(obj, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = self._mark()
            out = fn(*args, **kwargs)
            self.spans.setdefault(label, []).append((start, self._mark()))
            return out

        setattr(obj, attr, timed)

    def _mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def total_ms(self, label: str) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self.spans.get(label, []))
        return sum(b - a for a, b in self.spans.get(label, [])) * 1e3


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
    changed = [(m, m.attn_backend) for net in networks(method) for m in net.modules()
               if getattr(m, "attn_backend", "sdpa") != "sdpa"]
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


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak GPU memory allocated since the last reset of the statistics, in GiB (None on CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


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


def kernel_breakdown(kernels: list[tuple[str, float, int]], wall_us: float, top: int = 15,
                     sources: dict[str, list[tuple[str, float, int]]] | None = None) -> str:
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
        lines += ["", f"{cat.capitalize()}: kernels by the operations that launched them (top {top}):", "",
                  "| launching op < its callers | GPU ms | kernels |", "|---|---|---|"]
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


def profile_steps(train_step: Callable[[], None], n: int, device: torch.device) -> tuple[
        list[tuple[str, float, int]], float, dict[str, list[tuple[str, float, int]]]]:
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
    return [(e.key, float(e.self_device_time_total), int(e.count)) for e in averages
            if e.device_type == cuda and e.self_device_time_total > 0 and not getattr(e, "is_user_annotation", False)]


def measure(recipe: str, sets: list[str], method_name: str, *, steps: int, warmup: int,
            peak_override: float | None, profile_out: Path | None = None, profile_n: int = 3) -> dict[str, Any]:
    """Build one row's run and time it; return the row's numbers (see the module docstring)."""
    resolved = row_recipe(recipe, sets, method_name)
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        if method_name == "vsd":
            m = resolved.components["method"]
            teacher = str(random_teacher(resolved, Path(tmp)))
            resolved.components["method"] = attrs.evolve(m, config=attrs.evolve(m.config, init=teacher))
        run = build_run(resolved, Path(tmp), default_registry())
        method, strategy = run.method, run.ctx.strategy
        device = strategy.device
        timer = PhaseTimer(device)
        timer.wrap(method, "aux_step", "aux")
        timer.wrap(method, "generator_step", "generator")
        guard = NonFiniteGuard(limit=10**9)
        step = 0

        def train_step() -> None:
            nonlocal step
            guard.push(step, method.train_step(step))  # as the loop: the scalars stay on the device
            if guard.full:
                guard.read(strategy, 0)
            step += 1

        for _ in range(warmup):
            train_step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        timer.spans.clear()
        start = time.perf_counter()
        for _ in range(steps):
            train_step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
        # of the timed steps alone: read before the profiled steps and the FLOP count, whose step runs eager
        # (below) and would set the peak of every compiled row
        peak_gib = peak_memory_gib(device)
        aux_ms, gen_ms = timer.total_ms("aux") / steps, timer.total_ms("generator") / steps
        step_s = wall / steps
        peak, card = peak_tflops(device, peak_override)
        if profile_out is not None and strategy.is_main:
            kernels, wall_us, sources = profile_steps(train_step, profile_n, device)
            profile_out.parent.mkdir(parents=True, exist_ok=True)
            profile_out.write_text(
                f"Profile of {profile_n} steps of `{method_name}` ({recipe}, --set {' '.join(sets)}), "
                f"{card}, {wall_us / profile_n / 1e3:.1f} ms per step under the "
                f"profiler ({step_s * 1e3:.1f} ms without it)\n\n"
                + kernel_breakdown(kernels, wall_us, sources=sources))
        # last: a step under the FLOP counter (a dispatch mode) makes torch.compile'd code fall back to eager
        # for the rest of the process, which would turn the following compiled rows into eager ones
        flops = count_flops(train_step, method)
        world = strategy.world_size
        counts = method.parameter_counts()
        guard.read(strategy, 0)  # the steps still pending
        row = {
            "method": method_name, "batch": run.ctx.settings.batch_size, "world_size": world,
            "images_per_s": method.images_per_step() * world / step_s, "step_ms": step_s * 1e3,
            "aux_ms": aux_ms, "generator_ms": gen_ms, "other_ms": step_s * 1e3 - aux_ms - gen_ms,
            "peak_gib": peak_gib,
            "flops_per_step": flops, "tflops_per_s": flops / step_s / 1e12 if flops else None,
            "mfu": flops / step_s / (peak * 1e12) if flops and peak else None, "peak_tflops": peak,
            "device": card, "skipped_steps": guard.skipped, "params": counts,
            "strategy": {"name": resolved.components["strategy"].name, **resolved.to_dict()["strategy"]},
            "attention": resolved.to_dict().get("backbone", {}).get("attention"),
        }
        if strategy.is_main:
            print(f"  {method_name}: {row['images_per_s']:.1f} images/s, {row['step_ms']:.1f} ms/step", file=sys.stderr)
        for lg in run.loggers:
            lg.close()
    return row


# --------------------------------------------------------------------------------------------------
# Rows, isolation and the table
# --------------------------------------------------------------------------------------------------


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``'LABEL: key=value key=value'`` -> (label, --set list)."""
    label, sep, rest = text.partition(":")
    if not sep or not label.strip():
        raise SystemExit(f"--variant {text!r}: expected 'LABEL: key=value ...'")
    return label.strip(), shlex.split(rest)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def profile_path(args: argparse.Namespace, label: str, method: str) -> Path | None:
    """Where a row's profile goes (None without ``--profile``)."""
    return None if args.profile is None else args.profile / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', label)}-{method}.md"


def run_isolated(args: argparse.Namespace, sets: list[str], method: str, label: str) -> dict[str, Any]:
    """One row in a child process (single process: rank 0 of world size 1 on a fresh port)."""
    with tempfile.TemporaryDirectory(prefix="throughput-row-") as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, __file__, args.recipe, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--row", json.dumps({"method": method, "sets": sets, "label": label}), "--row-out", str(out),
               "--profile-steps", str(args.profile_steps)]
        if args.profile is not None:
            cmd += ["--profile", str(args.profile)]
        if args.peak_tflops:
            cmd += ["--peak-tflops", str(args.peak_tflops)]
        env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sys.stderr.write(proc.stdout)
        if proc.returncode != 0 or not out.exists():
            lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
            # the exception's own line, not a warning printed after it at exit (NCCL's, for one)
            errors = [ln for ln in lines if EXCEPTION_LINE.search(ln)]
            error = errors[-1] if errors else lines[-1] if lines else f"exit status {proc.returncode}"
            return {"method": method, "error": error.removeprefix("[rank0]: ")[:300]}
        return json.loads(out.read_text())


def run_in_process(args: argparse.Namespace, sets: list[str], method: str, label: str) -> dict[str, Any]:
    try:
        return measure(args.recipe, sets, method, steps=args.steps, warmup=args.warmup,
                       peak_override=args.peak_tflops, profile_out=profile_path(args, label, method),
                       profile_n=args.profile_steps)
    except Exception as exc:
        traceback.print_exc()
        return {"method": method, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table_row(variant: str, r: dict[str, Any]) -> str:
    if "error" in r:
        cells = [variant, r["method"], *["" for _ in COLUMNS[2:-1]], f"failed: {r['error']}"]
        return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"
    params = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in r["params"].items())
    cells = [variant, r["method"], f"{r['batch']} x {r['world_size']}", fmt(r["images_per_s"], ",.1f"),
             fmt(r["step_ms"], ".1f"), fmt(r["aux_ms"], ".1f"), fmt(r["generator_ms"], ".1f"),
             fmt(r["other_ms"], ".1f"),
             fmt(r["peak_gib"], ".2f"), fmt(r["flops_per_step"] and r["flops_per_step"] / 1e12, ".4g"),
             fmt(r["tflops_per_s"], ".1f"), fmt(r["mfu"] and 100 * r["mfu"], ".1f") + ("%" if r["mfu"] else ""),
             params]
    return "| " + " | ".join(cells) + " |"


def render(args: argparse.Namespace, rows: list[tuple[str, dict[str, Any]]],
           variants: list[tuple[str, list[str]]]) -> str:
    ok = [r for _, r in rows if "error" not in r]
    first = ok[0] if ok else {}
    lines = [
        f"Throughput of `{args.recipe}` ({time.strftime('%Y-%m-%d %H:%M')}): {args.steps} timed steps after "
        f"{args.warmup} warm-up steps and one counted step; `python benchmarks/throughput.py` "
        + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "",
        f"- device: {first.get('device', '?')} x {first.get('world_size', '?')}; torch {torch.__version__}; "
        f"MFU against {fmt(first.get('peak_tflops'), '.0f')} TFLOP/s dense bf16 per card",
        f"- strategy: {json.dumps(first.get('strategy'))}; attention: {first.get('attention')} (of the first row)",
        "- variants: " + "; ".join(f"{label} = {' '.join(extra) or 'the recipe with the --set list'}"
                                   for label, extra in variants),
        "- batch: per GPU x GPUs; images/s: generated images per second over all GPUs; aux step: the ratio "
        "estimator's step (diffratio) or the fake score's (vsd); the generator step includes the EMA update; "
        "other: the per-step finite check and gaps",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *(table_row(v, r) for v, r in rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="a diffratio or vsd recipe, e.g. recipes/imagenet512.toml")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override for every row (as dr-train --set); repeatable")
    ap.add_argument("--variant", action="append", default=[], metavar="'LABEL: KEY=VALUE ...'",
                    help="a labelled set of further overrides; each variant runs every method; repeatable")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated: diffratio, vsd")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotuning, allocator)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak per card for MFU")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table to this file")
    ap.add_argument("--no-isolate", action="store_true", help="run the rows in this process, one after another")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="also profile each row's GPU kernels into DIR/VARIANT-METHOD.md")
    ap.add_argument("--profile-steps", type=int, default=3, help="steps under the profiler (with --profile)")
    ap.add_argument("--row", help=argparse.SUPPRESS)  # internal: one row, as a child process
    ap.add_argument("--row-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.profile_steps < 1:
        ap.error("--steps and --profile-steps must be >= 1 and --warmup >= 0")

    if args.row:
        spec = json.loads(args.row)
        profile_out = profile_path(args, spec.get("label", "base"), spec["method"])
        row = measure(args.recipe, spec["sets"], spec["method"], steps=args.steps, warmup=args.warmup,
                      peak_override=args.peak_tflops, profile_out=profile_out, profile_n=args.profile_steps)
        args.row_out.write_text(json.dumps(row))
        return 0

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        ap.error(f"--methods: choose from {', '.join(METHODS)}")
    variants = [parse_variant(v) for v in args.variant] or [("base", [])]
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    isolate = not args.no_isolate and not distributed
    main_rank = int(os.environ.get("RANK", "0")) == 0
    rows: list[tuple[str, dict[str, Any]]] = []
    for label, extra in variants:
        for method in methods:
            if main_rank:
                print(f"{label} / {method} ...", file=sys.stderr, flush=True)
            sets = [*args.sets, *extra]
            run_row = run_isolated if isolate else run_in_process
            rows.append((label, run_row(args, sets, method, label)))
    if main_rank:
        text = render(args, rows, variants)
        print(text)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
    return 1 if any("error" in r for _, r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
