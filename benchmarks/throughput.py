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
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from throughput_measure import METHODS, measure

#: the line of a traceback that names the exception, e.g. "torch.OutOfMemoryError: CUDA out of memory"
EXCEPTION_LINE = re.compile(r"\b\w+(Error|Exception)\b: ")
COLUMNS = (
    "variant",
    "method",
    "batch",
    "images/s",
    "step ms",
    "aux step ms",
    "generator step ms",
    "other ms",
    "peak GiB",
    "TFLOP/step",
    "TFLOP/s",
    "MFU",
    "params (M)",
)


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
        cmd = [
            sys.executable,
            __file__,
            args.recipe,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--row",
            json.dumps({"method": method, "sets": sets, "label": label}),
            "--row-out",
            str(out),
            "--profile-steps",
            str(args.profile_steps),
        ]
        if args.profile is not None:
            cmd += ["--profile", str(args.profile)]
        if args.peak_tflops:
            cmd += ["--peak-tflops", str(args.peak_tflops)]
        env = {
            **os.environ,
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
        }
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
        return measure(
            args.recipe,
            sets,
            method,
            steps=args.steps,
            warmup=args.warmup,
            peak_override=args.peak_tflops,
            profile_out=profile_path(args, label, method),
            profile_n=args.profile_steps,
        )
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
    cells = [
        variant,
        r["method"],
        f"{r['batch']} x {r['world_size']}",
        fmt(r["images_per_s"], ",.1f"),
        fmt(r["step_ms"], ".1f"),
        fmt(r["aux_ms"], ".1f"),
        fmt(r["generator_ms"], ".1f"),
        fmt(r["other_ms"], ".1f"),
        fmt(r["peak_gib"], ".2f"),
        fmt(r["flops_per_step"] and r["flops_per_step"] / 1e12, ".4g"),
        fmt(r["tflops_per_s"], ".1f"),
        fmt(r["mfu"] and 100 * r["mfu"], ".1f") + ("%" if r["mfu"] else ""),
        params,
    ]
    return "| " + " | ".join(cells) + " |"


def render(
    args: argparse.Namespace, rows: list[tuple[str, dict[str, Any]]], variants: list[tuple[str, list[str]]]
) -> str:
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
        "- variants: "
        + "; ".join(f"{label} = {' '.join(extra) or 'the recipe with the --set list'}" for label, extra in variants),
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
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override for every row (as dr-train --set); repeatable",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="'LABEL: KEY=VALUE ...'",
        help="a labelled set of further overrides; each variant runs every method; repeatable",
    )
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated: diffratio, vsd")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotuning, allocator)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak per card for MFU")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table to this file")
    ap.add_argument("--no-isolate", action="store_true", help="run the rows in this process, one after another")
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="also profile each row's GPU kernels into DIR/VARIANT-METHOD.md",
    )
    ap.add_argument("--profile-steps", type=int, default=3, help="steps under the profiler (with --profile)")
    ap.add_argument("--row", help=argparse.SUPPRESS)  # internal: one row, as a child process
    ap.add_argument("--row-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.profile_steps < 1:
        ap.error("--steps and --profile-steps must be >= 1 and --warmup >= 0")

    if args.row:
        spec = json.loads(args.row)
        profile_out = profile_path(args, spec.get("label", "base"), spec["method"])
        row = measure(
            args.recipe,
            spec["sets"],
            spec["method"],
            steps=args.steps,
            warmup=args.warmup,
            peak_override=args.peak_tflops,
            profile_out=profile_out,
            profile_n=args.profile_steps,
        )
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
