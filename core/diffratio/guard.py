"""Non-finite steps: counted from scalars kept on the device and read once per window, never once per step.

The Trainables skip a non-finite update on the device (``Trainable.step``), so a bad step never changes a
model; the guard only has to count bad steps, keep checkpoints out of a streak of them and stop a
diverged run. It holds each step's returned scalars (0-d tensors, no copy, no wait) until ``read``, which
the loop calls at each logging interval, before each checkpoint and when ``WINDOW`` steps are pending:
one host transfer for the whole window, then one agreement between ranks on which steps were bad and on
a stop request. A run therefore stops at the first read after its ``limit``-th bad step in a row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffratio.components import Strategy
from diffratio.errors import DiffRatioError

#: most steps whose scalars wait on the device for a read (bounds memory when log_every is large)
WINDOW = 1000


class Diverged(DiffRatioError):
    """Training stopped after ``run.max_nonfinite_steps`` steps in a row with non-finite losses or gradients."""


class NonFiniteGuard:
    """Counts steps with a non-finite scalar (a loss, a gradient norm) and detects a diverged run."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.skipped = 0  # bad steps since the run began (kept in checkpoints)
        self.streak = 0  # bad steps in a row, up to the last step read
        self.first_bad = ""  # what was not finite at the first step of the current streak
        self.diverged_at = 0  # the step whose read found ``limit`` bad steps in a row (0: not diverged)
        self.pending: list[tuple[int, Mapping[str, Tensor | float]]] = []  # steps not read yet
        self.sums: dict[str, list[float]] = {}  # key -> [sum, count] of finite values since the last log

    def push(self, step: int, scalars: Mapping[str, Tensor | float]) -> None:
        """Keep ``step``'s scalars for the next read (no host synchronisation)."""
        self.pending.append((step, {k: v.detach() if isinstance(v, Tensor) else v for k, v in scalars.items()}))

    @property
    def full(self) -> bool:
        return len(self.pending) >= WINDOW

    def read(self, strategy: Strategy, stop: int) -> int:
        """Read every pending step (one host transfer), agree with the other ranks on which were bad and on the
        stop request ``stop`` (a signal number or 0), and count them; return the agreed stop request."""
        tensors = [v.float().reshape(()) for _, sc in self.pending for v in sc.values() if isinstance(v, Tensor)]
        flat = iter(torch.stack(tensors).tolist() if tensors else [])
        steps = [(step, {k: next(flat) if isinstance(v, Tensor) else float(v) for k, v in sc.items()})
                 for step, sc in self.pending]
        self.pending = []
        *bad, stop = strategy.max_over_ranks([not self.finite(v) for _, v in steps] + [stop])
        for (step, values), b in zip(steps, bad, strict=True):
            for k, v in values.items():
                if math.isfinite(v):
                    acc = self.sums.setdefault(k, [0.0, 0])
                    acc[0] += v
                    acc[1] += 1
            if self.record(step, values, finite=not b) and not self.diverged_at:
                self.diverged_at = step
        return int(stop)

    def means(self) -> dict[str, float]:
        """Mean of each scalar over the finite values since the last call (nan where none was finite)."""
        out = {k: s / n if n else math.nan for k, (s, n) in self.sums.items()}
        self.sums = {}
        return out

    @staticmethod
    def finite(values: Mapping[str, float]) -> bool:
        """Whether every value is finite (an overflow past 3e38 is a blow-up too)."""
        return all(math.isfinite(float(v)) for v in values.values())

    def record(self, step: int, values: Mapping[str, float], finite: bool) -> bool:
        """Count ``step`` as good or bad (``finite``: on every rank); True when it completes ``limit`` or more
        bad steps in a row."""
        if finite:
            self.streak = 0
            return False
        self.skipped += 1
        self.streak += 1
        if self.streak == 1:
            bad = ", ".join(f"{k} = {float(v)}" for k, v in values.items() if not math.isfinite(float(v)))
            self.first_bad = f"{bad or 'a scalar of another rank'} at step {step}"
        return self.streak >= self.limit

    def error(self, step: int, last_good: Path | None) -> Diverged:
        where = (f"the last checkpoint, {last_good} (step {int(last_good.name)}), is from before the divergence"
                 if last_good is not None else "no checkpoint was written before it")
        return Diverged(f"training diverged: {self.streak} steps in a row had non-finite losses or gradients "
                        f"(run.max_nonfinite_steps = {self.limit}), from {self.first_bad} to step {step}. "
                        f"Their updates were skipped and nothing was saved after the divergence began; {where}. "
                        "Lower the learning rates, set a grad_clip or check the data, and start again with a new "
                        "--run-dir; to carry on from that checkpoint, re-run with a larger run.max_nonfinite_steps.")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped, "streak": self.streak, "first_bad": self.first_bad}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.skipped, self.streak = int(state.get("skipped_steps", 0)), int(state.get("streak", 0))
        self.first_bad = str(state.get("first_bad", ""))
