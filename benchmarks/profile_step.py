"""Where a training step's time goes: the real `dr-train` loop under the PyTorch profiler.

    python benchmarks/profile_step.py recipes/fashion-mnist.toml --steps 20 [--set KEY=VALUE ...] [--trace t.json]

Runs the recipe's training loop as `dr-train` does (temporary run directory, no checkpoints, metrics,
samples or loggers inside the profiled window) and profiles ``--steps`` loop steps after ``--warmup``
steps. It prints one markdown table per recipe: wall time per step (device synchronised at both ends of
the window), the GPU's busy fraction (kernel time over wall time), kernel launches, host waits (stream or
device synchronisations, device-to-host copies, ``aten::item``) per step, and the CPU operators with the
most self time. A step bound by the GPU shows a busy fraction near 1; one bound by the host shows gaps,
and every host wait per step stops the host from running ahead of the GPU.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.profiler import ProfilerActivity, profile

from diffratio.hooks import hookimpl
from diffratio.recipe import load_recipe
from diffratio.registry import Provider, Registry

WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::item",
         "aten::_local_scalar_dense")
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaGraphLaunch")


class WindowDone(Exception):  # noqa: N818 - a signal to end the run, not an error
    """Raised in place of the step after the profiled window: the run ends there, without its final
    checkpoint, samples or evaluation (minutes for a large model, and nothing the profile needs)."""


class StepProfiler:
    """A plugin that wraps the method's ``train_step`` to profile loop steps ``warmup .. warmup + steps``."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.calls = 0
        self.prof: profile | None = None
        self.wall = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _boundary(self) -> None:
        if self.calls == self.warmup:
            self._sync()
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self.prof = profile(activities=activities)
            self.prof.start()
            self.wall = time.perf_counter()
        elif self.calls == self.warmup + self.steps and self.prof is not None:
            self._sync()
            self.wall = time.perf_counter() - self.wall
            self.prof.stop()

    @hookimpl
    def diffratio_on_run_start(self, run: Any) -> None:
        inner = run.method.train_step

        def train_step(step: int) -> Any:
            self._boundary()
            if self.calls == self.warmup + self.steps:
                raise WindowDone
            self.calls += 1
            return inner(step)

        run.method.train_step = train_step


def summarize(p: StepProfiler) -> dict[str, Any]:
    """Per-step figures from the profiled window."""
    assert p.prof is not None
    n = p.steps
    names: Counter[str] = Counter()
    kernel_us = 0.0
    cpu_self: Counter[str] = Counter()
    memcpy_dtoh = 0
    for ev in p.prof.events():
        names[ev.name] += 1
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            kernel_us += ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
            if "Memcpy DtoH" in ev.name:
                memcpy_dtoh += 1
        else:
            cpu_self[ev.name] += ev.self_cpu_time_total
    wall_ms = 1e3 * p.wall / n
    return {
        "wall_ms": wall_ms,
        "gpu_busy": (kernel_us / 1e3 / n) / wall_ms if p.device.type == "cuda" else float("nan"),
        "launches": sum(names[k] for k in LAUNCHES) / n,
        "waits": {k: names[k] / n for k in WAITS if names[k]},
        "dtoh": memcpy_dtoh / n,
        "top_cpu": [(k, v / 1e3 / n) for k, v in cpu_self.most_common(8)],
    }


def profile_recipe(recipe_path: str, sets: list[str], warmup: int, steps: int, trace: str | None) -> str:
    from diffratio.engine import training_loop

    registry = Registry().load()
    with tempfile.TemporaryDirectory() as tmp:
        total = warmup + steps + 1
        overrides = [*sets, f"run.steps={total}", f"run.log_every={total}", f"run.checkpoint_every={10 * total}",
                     "run.eval_every=0", "run.sample_every=0",
                     "run.min_free_disk_gb=0.0"]
        recipe = load_recipe(Path(recipe_path), tuple(overrides), registry=registry)
        recipe = attrs.evolve(recipe, metrics={}, loggers={})  # nothing but training in the window
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        prof = StepProfiler(warmup, steps, device)
        registry.register(prof, Provider("profile_step", "benchmark", "-"))
        try:
            training_loop(recipe, Path(tmp) / "run", registry, progress=False)
        except WindowDone:
            pass
    if trace and prof.prof is not None:
        prof.prof.export_chrome_trace(trace)
    s = summarize(prof)
    waits = ", ".join(f"{k} {v:.1f}" for k, v in s["waits"].items()) or "none"
    top = "; ".join(f"{k} {v:.2f} ms" for k, v in s["top_cpu"])
    return (f"| {recipe_path} {' '.join(sets)} | {s['wall_ms']:.2f} | {s['gpu_busy']:.2f} | {s['launches']:.0f} | "
            f"{waits}; DtoH copies {s['dtoh']:.1f} |\n\nTop CPU self time per step: {top}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="+")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override (all recipes)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--trace", default=None, help="write a Chrome trace of the last recipe's window here")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"profile of {args.steps} loop steps after {args.warmup}; {card}, torch {torch.__version__}, "
          f"{datetime.date.today()}, commit {commit}\n")
    print("| recipe | wall ms/step | GPU busy | kernel launches/step | host waits per step |")
    print("|---|---|---|---|---|")
    for r in args.recipes:
        print(profile_recipe(r, args.sets, args.warmup, args.steps, args.trace), flush=True)


if __name__ == "__main__":
    sys.exit(main())
