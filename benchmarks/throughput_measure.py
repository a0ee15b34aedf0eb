"""One row of ``throughput.py``: the run of a method built from the recipe as ``dr-train`` builds it, its
training steps timed (whole step, auxiliary step, generator step), its peak memory, then the optional
profile and, last, the FLOP count (see ``measure``)."""

from __future__ import annotations

import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import attrs
import torch

from diffratio.edm import EDMDenoiser
from diffratio.engine import build_run
from diffratio.guard import NonFiniteGuard
from diffratio.inference import EXPORT_FORMAT
from diffratio.recipe import apply_sets, read_recipe_text, resolve_recipe
from diffratio.registry import default_registry
from throughput_flops import count_flops, peak_tflops
from throughput_profile import kernel_breakdown, profile_steps

METHODS = ("diffratio", "vsd")


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
    torch.save(
        {
            "format": EXPORT_FORMAT,
            "config": {"method": {"name": "edm"}},
            "step": 0,
            "data": {
                "data_shape": list(data.data_shape),
                "num_labels": data.num_labels,
                "sigma_data": float(data.sigma_data),
            },
            "weights": {"denoiser": denoiser.state_dict()},
        },
        path,
    )
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


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak GPU memory allocated since the last reset of the statistics, in GiB (None on CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def measure(
    recipe: str,
    sets: list[str],
    method_name: str,
    *,
    steps: int,
    warmup: int,
    peak_override: float | None,
    profile_out: Path | None = None,
    profile_n: int = 3,
) -> dict[str, Any]:
    """Build one row's run and time it; return the row's numbers (see ``throughput.py``'s docstring)."""
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
                f"profiler ({step_s * 1e3:.1f} ms without it)\n\n" + kernel_breakdown(kernels, wall_us, sources=sources)
            )
        # last: a step under the FLOP counter (a dispatch mode) makes torch.compile'd code fall back to eager
        # for the rest of the process, which would turn the following compiled rows into eager ones
        flops = count_flops(train_step, method)
        world = strategy.world_size
        counts = method.parameter_counts()
        guard.read(strategy, 0)  # the steps still pending
        row = {
            "method": method_name,
            "batch": run.ctx.settings.batch_size,
            "world_size": world,
            "images_per_s": method.images_per_step() * world / step_s,
            "step_ms": step_s * 1e3,
            "aux_ms": aux_ms,
            "generator_ms": gen_ms,
            "other_ms": step_s * 1e3 - aux_ms - gen_ms,
            "peak_gib": peak_gib,
            "flops_per_step": flops,
            "tflops_per_s": flops / step_s / 1e12 if flops else None,
            "mfu": flops / step_s / (peak * 1e12) if flops and peak else None,
            "peak_tflops": peak,
            "device": card,
            "skipped_steps": guard.skipped,
            "params": counts,
            "strategy": {"name": resolved.components["strategy"].name, **resolved.to_dict()["strategy"]},
            "attention": resolved.to_dict().get("backbone", {}).get("attention"),
        }
        if strategy.is_main:
            print(f"  {method_name}: {row['images_per_s']:.1f} images/s, {row['step_ms']:.1f} ms/step", file=sys.stderr)
        for lg in run.loggers:
            lg.close()
    return row
