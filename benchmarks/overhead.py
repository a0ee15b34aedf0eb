"""Framework overhead: one training step as a plain PyTorch loop and through ``method.train_step``.

    python benchmarks/overhead.py --device cuda --out overhead.md
    python benchmarks/overhead.py --device cpu --steps 5        # CI: a shrunk U-Net, a tiny batch

Why: a framework should cost nothing over the loop it replaces (the target: >= 0.97x the images/s, memory within
5%). For EDM pretraining, DiffRatio-DiJS and VSD (recipes/fashion-mnist-pretrain.toml, fashion-mnist.toml,
fashion-mnist-vsd.toml), eager and compiled, one process on one device runs **plain**, the loop a researcher would
write around the recipe's backbone class (``overhead_plain.py``: EDM preconditioning and ratio head written there;
sample, forward, loss, backward, fused Adam, EMA by ``torch._foreach_lerp_``; the recipe's batch, optimiser and EMA
settings, auxiliary steps per generator step, sigma distribution, bf16 autocast and channels_last), and **framework**,
``method.train_step(step)`` of the run ``engine.build_run`` makes from the recipe as ``dr-train`` does (without the
engine loop's own per-step work). Both start from one random denoiser (one EDM step of the real training loop:
each stage's ``method.init``); the ratio / fake-score warm-up is off (steady-state steps). Timed
windows alternate (plain, framework, ...) after warm-up steps, so both see the same machine state; a side's
images/s is its median window, its peak memory what it holds after warm-up (models, optimiser state, EMA, data)
plus its largest transient allocation.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import gc
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd import DeviceType
from torch.utils.flop_counter import FlopCounterMode

from diffratio.engine import build_run, training_loop
from diffratio.inference import load_pretrained_denoiser
from diffratio.recipe import load_recipe
from diffratio.registry import Registry, default_registry
from overhead_plain import FASHION, Plain, load_images

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"edm": "fashion-mnist-pretrain.toml", "diffratio": "fashion-mnist.toml", "vsd": "fashion-mnist-vsd.toml"}
NO_WARMUP = {"edm": [], "diffratio": ["method.warmup_ratio_steps=0"], "vsd": ["method.warmup_fake_steps=0"]}
CPU_BATCH, CPU_CHANNELS = 4, 16


def recipe_sets(args: argparse.Namespace, compiled: bool) -> list[str]:
    """``--set`` overrides of every framework run: device, compile, batch, CPU shrinking, data, no logger."""
    sets = [f"strategy.device={args.device}", f"strategy.compile={str(compiled).lower()}", "loggers.tensorboard=false"]
    sets += [f"run.batch_size={args.batch}"] if args.batch else []
    sets += [f"backbone.model_channels={args.channels}"] if args.channels else []
    sets += ['strategy.precision="fp32"'] if args.device == "cpu" else []  # bf16 autocast only slows a CPU down
    synthetic = ["dataset.name=synthetic-latents", "dataset.shape=[1, 32, 32]", "dataset.num_labels=0"]
    return sets + (synthetic if args.synthetic else [])


def make_init(args: argparse.Namespace, registry: Registry, folder: Path) -> dict[str, Tensor]:
    """A random denoiser after one EDM step, trained by the real training loop into ``folder`` (the pretraining
    run each stage's ``method.init`` loads); returns its weights as the plain loop reads them. Its closing
    sample grid is drawn with one sampler step (nothing reads it); its log lines go to stderr (stdout is the
    table's)."""
    sets = [*recipe_sets(args, False), "run.batch_size=2", "run.steps=1", "method.sample_steps=1"]
    with contextlib.redirect_stdout(sys.stderr):
        training_loop(
            load_recipe(ROOT / "recipes" / RECIPES["edm"], sets, registry=registry), folder, registry, progress=False
        )
    return load_pretrained_denoiser(folder, registry)


def settled(device: torch.device) -> int:
    """Bytes allocated on the GPU after a garbage collection and its queued work (0 on CPU)."""
    gc.collect()
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    return torch.cuda.memory_allocated(device)


def window(step: Callable[[], Any], steps: int, device: torch.device) -> tuple[float, int]:
    """(seconds for ``steps`` steps, the largest allocation above the start in bytes)."""
    start, cuda = settled(device), device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    return seconds, (torch.cuda.max_memory_allocated(device) - start if cuda else 0)


def profiled(step: Callable[[], Any], device: torch.device, steps: int = 2) -> tuple[float, float | None]:
    """Per step, under the profiler: the operations the host dispatches (``aten::`` calls that no other
    ``aten::`` call made; each costs the host microseconds whatever its kernel takes, so an eager step bound
    by the host pays for every one), and on a GPU the milliseconds it spends in kernels and copies (equal on
    both sides when they launch the same work, so what a side's step takes beyond it is the host's)."""
    cuda = device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    top = [
        e
        for e in prof.events()
        if e.name.startswith("aten::") and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))
    ]
    gpu_us = sum(e.self_device_time_total for e in prof.key_averages() if e.device_type == DeviceType.CUDA)
    return len(top) / steps, gpu_us / 1e3 / steps if cuda else None


def python_calls(step: Callable[[], Any], steps: int = 2) -> float:
    """Python function calls per step, built-ins included (``cProfile``'s count): the interpreter's work
    beside the operations the host dispatches, which an eager step bound by the host also pays for."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step()
    prof.disable()
    return pstats.Stats(prof).total_calls / steps


def gflop(step: Callable[[], Any]) -> float:
    """Floating-point work of one step in GFLOP, as ``torch.utils.flop_counter`` counts it (matrix products and
    convolutions): equal on both sides when they run the same networks on the same batches."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def measure(
    stage: str,
    compiled: bool,
    args: argparse.Namespace,
    registry: Registry,
    init: dict[str, Tensor],
    images: Tensor,
    tmp: Path,
) -> dict[str, Any]:
    """Both sides of one stage and mode: median images/s and peak memory of each."""
    device = torch.device(args.device)
    sets = [*recipe_sets(args, compiled), f'method.init="{tmp / "init"}"', *NO_WARMUP[stage]]
    recipe = load_recipe(ROOT / "recipes" / RECIPES[stage], sets, registry=registry)
    warmup = args.warmup if args.warmup is not None else (1 if device.type == "cpu" else 15 if compiled else 5)
    sides: dict[str, dict[str, Any]] = {}
    for name in ("framework", "plain"):
        base = settled(device)
        if name == "framework":  # the run dr-train builds (its data set with it); the loop's step counter
            method, counter = build_run(recipe, tmp / f"{stage}-{compiled}", registry).method, iter(range(10**9))
            step = lambda m=method, c=counter: m.train_step(next(c))  # noqa: E731
            sides[name] = {"step": step, "images": method.images_per_step()}
        else:  # the plain loop's images are loaded once for all stages: counted here
            plain = Plain(stage, recipe, init, images, device, compiled)
            sides[name] = {"step": plain.step, "images": plain.batch}
            base -= images.numel() * images.element_size()
        for _ in range(warmup):
            sides[name]["step"]()
        sides[name].update(held=settled(device) - base, rates=[], transient=0)
    for _ in range(args.windows):
        for side in (sides["plain"], sides["framework"]):
            seconds, transient = window(side["step"], args.steps, device)
            side["rates"].append(args.steps * side["images"] / seconds)
            side["transient"] = max(side["transient"], transient)
    mem = {
        f"{name}_mem": side["held"] + side["transient"] if device.type == "cuda" else None
        for name, side in sides.items()
    }
    for name, side in sides.items():
        mem[f"{name}_ops"], mem[f"{name}_kernel_ms"] = profiled(side["step"], device)
    mem |= {f"{name}_calls": python_calls(side["step"]) for name, side in sides.items()}
    mem |= {f"{name}_gflop": None if compiled else gflop(side["step"]) for name, side in sides.items()}
    return {
        "stage": stage,
        "mode": "compiled" if compiled else "eager",
        "batch": plain.batch,
        **mem,
        **{f"{name}_ips": statistics.median(side["rates"]) for name, side in sides.items()},
    }


def machine(device: torch.device) -> str:
    """The card's name, or the CPU model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    model = next((x.split(":", 1)[1].strip() for x in info if x.startswith("model name")), "unknown CPU")
    return f"{model}, {torch.get_num_threads()} thread(s)"


def commit() -> str:
    """The checkout's short commit, marked when tracked files differ from it."""

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        head, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + (" (with uncommitted changes)" if dirty else "")


def render(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The markdown table under its header, and the summary line last."""
    cpu = args.device == "cpu"
    gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f} GiB"  # noqa: E731
    changed = [
        f"{k} = {v}" for k, v in (("run.batch_size", args.batch), ("backbone.model_channels", args.channels)) if v
    ] + (["strategy.precision = fp32"] if cpu else [])
    lines = [
        f"# Framework overhead on {machine(torch.device(args.device))}",
        "",
        f"- torch {torch.__version__}, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}",
        f"- command: `python benchmarks/overhead.py {' '.join(sys.argv[1:])}`",
        "- data: " + ("synthetic tensors (1x32x32, std 0.5)" if args.synthetic else "Fashion-MNIST padded to 32x32"),
        f"- recipes {', '.join(f'recipes/{RECIPES[s]}' for s in args.stages)}; shrunk or changed: "
        f"{'; '.join(changed) or 'nothing'}; ratio / fake-score warm-up off (steady-state steps)",
        f"- {args.windows} alternating windows of {args.steps} steps per side after warm-up; median images/s "
        "(generated images for diffratio and vsd); framework = `method.train_step` alone",
    ] + (
        ["- compiled on CPU: the plain loop compiles, the framework's strategies on GPU only"]
        if cpu and "compiled" in args.modes
        else []
    )
    lines += [
        "- host operations: `aten::` calls the host dispatches per step (profiled, 2 steps; not timed); Python "
        "calls: function calls per step, built-ins included (cProfile, 2 steps; not timed); GPU ms: time per step "
        "the GPU spends in kernels and copies (the same profile); GFLOP per step: "
        "`torch.utils.flop_counter` over one eager step (compiled steps run the same operations)"
    ]
    lines += [
        "",
        "| stage | mode | batch | plain images/s | framework images/s | framework/plain | plain peak memory "
        "| framework peak memory | memory framework/plain | plain host operations | framework host operations "
        "| Python calls plain / framework | GPU ms per step plain / framework | GFLOP per step plain / framework |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = f"{r['framework_mem'] / r['plain_mem']:.3f}" if r["plain_mem"] else "n/a"
        flop = "n/a" if r["plain_gflop"] is None else f"{r['plain_gflop']:,.2f} / {r['framework_gflop']:,.2f}"
        gpu = "n/a" if r["plain_kernel_ms"] is None else f"{r['plain_kernel_ms']:.1f} / {r['framework_kernel_ms']:.1f}"
        lines.append(
            f"| {r['stage']} | {r['mode']} | {r['batch']} | {r['plain_ips']:,.1f} | {r['framework_ips']:,.1f} "
            f"| {r['framework_ips'] / r['plain_ips']:.3f} | {gib(r['plain_mem'])} "
            f"| {gib(r['framework_mem'])} | {mem} | {r['plain_ops']:,.0f} | {r['framework_ops']:,.0f} "
            f"| {r['plain_calls']:,.0f} / {r['framework_calls']:,.0f} | {gpu} | {flop} |"
        )
    worst = min(r["framework_ips"] / r["plain_ips"] for r in rows)
    return "\n".join([*lines, "", f"overhead: min framework/plain ratio = {worst:.2f}"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per window")
    ap.add_argument("--windows", type=int, help="timed windows per side (default 5; 2 on CPU)")
    ap.add_argument("--warmup", type=int, help="untimed steps per side first (default 5, 15 compiled; 1 on CPU)")
    ap.add_argument("--batch", type=int, help=f"batch (default: the recipes'; {CPU_BATCH} on CPU)")
    ap.add_argument(
        "--channels", type=int, help=f"backbone.model_channels (default: the recipes'; {CPU_CHANNELS} on CPU)"
    )
    ap.add_argument("--threads", type=int, help="torch's CPU threads (default 1 on CPU; torch's own on GPU)")
    ap.add_argument("--stages", default="edm,diffratio,vsd", help="comma-separated: edm, diffratio, vsd")
    ap.add_argument("--modes", default="eager,compiled", help="comma-separated: eager, compiled")
    ap.add_argument("--compile", action="store_true", help="run the compiled mode on CPU too")
    ap.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    args.stages, args.modes = args.stages.split(","), args.modes.split(",")
    for what, given, known in (("--stages", args.stages, RECIPES), ("--modes", args.modes, ("eager", "compiled"))):
        if any(x not in known for x in given):
            ap.error(f"{what} {','.join(given)!r}: choose among {', '.join(known)}")
    for name in ("steps", "windows", "warmup", "batch", "channels", "threads"):
        if (getattr(args, name) or 1) < (0 if name == "warmup" else 1):
            ap.error(f"--{name} must be {'>= 0' if name == 'warmup' else 'positive'}, got {getattr(args, name)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA GPU is visible; use --device cpu")
    if args.device == "cpu":
        args.windows, args.threads = args.windows or 2, args.threads or 1
        args.batch, args.channels = args.batch or CPU_BATCH, args.channels or CPU_CHANNELS
        args.modes = args.modes if args.compile else [m for m in args.modes if m != "compiled"]
        if not args.modes:
            ap.error("--modes compiled on CPU needs --compile (compiling gives no speed-up on CPU)")
    args.windows = args.windows or 5
    args.synthetic = not (FASHION / "train-images-idx3-ubyte.gz").exists()
    return args


def write(path: Path, table: str) -> None:
    """``table`` into the markdown file ``path`` (its folder made if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    registry, device, rows = default_registry(), torch.device(args.device), []
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        init = make_init(args, registry, Path(tmp) / "init")
        images = load_images(device, args.synthetic)
        for stage, mode in [(stage, mode) for stage in args.stages for mode in args.modes]:
            rows.append(r := measure(stage, mode == "compiled", args, registry, init, images, Path(tmp)))
            print(
                stage,
                mode,
                f"plain / framework images/s: {r['plain_ips']:.1f} / {r['framework_ips']:.1f}",
                file=sys.stderr,
            )
            if args.out is not None:  # the rows so far, so that a run stopped early keeps what it measured
                write(args.out, render(rows, args))
            torch._dynamo.reset()  # this pair's compiled graphs go with its networks
            settled(device)
            torch.cuda.empty_cache()
    table = render(rows, args)
    if args.out is not None:
        write(args.out, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
