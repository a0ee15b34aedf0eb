"""What the main rank shows while training: a progress bar of 80 columns, or one compact line per interval.

Both show the step, the time left and a few key numbers (the losses, images per second, skipped steps when
there are any); the full set of scalars goes to the loggers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from types import TracebackType

import torch
from tqdm import tqdm

from diffratio.run import Run

WIDTH = 80


def compact(value: float) -> str:
    """A number in at most six characters: ``0.1234``, ``4.5k``, ``1.2e-05``."""
    a = abs(value)
    if a >= 1e4:
        for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if a >= div:
                return f"{value / div:.3g}{suffix}"
    return f"{value:.4g}"


def key_numbers(values: Mapping[str, float], limit: int = 3) -> str:
    """Up to ``limit`` key scalars: the losses first (without the ``loss/`` prefix), then images/s."""
    picked = [(k.removeprefix("loss/"), v) for k, v in values.items() if k.startswith("loss")][: limit - 1]
    if "images_per_second" in values:
        picked.append(("img/s", values["images_per_second"]))
    if values.get("nonfinite/skipped_steps"):
        picked.append(("skipped", values["nonfinite/skipped_steps"]))
    return " ".join(f"{k}={compact(v)}" for k, v in picked[: limit + 1])


def clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """A bar (``bar=True``, on a terminal or not) or a log line per call of ``log``; silent off the main rank."""

    def __init__(self, step: int, total: int, *, bar: bool, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.start_step, self.t0 = step, time.perf_counter()
        self.last_step, self.last_time = step, self.t0
        self.bar = None
        if enabled and bar:
            self.bar = tqdm(total=total, initial=step, ncols=WIDTH, unit="step", file=sys.stderr,
                            mininterval=1.0 if sys.stderr.isatty() else 30.0,
                            bar_format="{n_fmt}/{total_fmt} {bar} eta {remaining} {desc}")

    def eta(self, step: int) -> str:
        done = step - self.start_step
        if done <= 0:
            return "?"
        return clock((time.perf_counter() - self.t0) / done * (self.total - step))

    def log(self, run: Run) -> dict[str, float]:
        """The scalars of the logging interval that ends at ``run.step`` (every rank calls it: the means are
        averaged over ranks), shown on the main rank."""
        strategy = run.ctx.strategy
        values = strategy.all_reduce_mean(run.guard.means())
        now = time.perf_counter()
        images = (run.step - self.last_step) * run.method.images_per_step() * strategy.world_size
        values["images_per_second"] = images / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = run.step, now
        values["nonfinite/skipped_steps"] = float(run.guard.skipped)
        if strategy.device.type == "cuda":
            values["peak_memory_gib"] = torch.cuda.max_memory_allocated(strategy.device) / 2**30
        self.update(run.step, values)
        return values

    def update(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description_str(key_numbers(values)[:44], refresh=False)
            self.bar.update(step - self.bar.n)
            return
        line = f"step {step}/{self.total} eta {self.eta(step)} {key_numbers(values)}"
        print(line[:WIDTH], flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
