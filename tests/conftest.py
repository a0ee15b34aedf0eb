"""Shared fixtures: tiny recipe overrides and helpers to run the command-line tools."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Tiny networks on a 2-core machine run far faster on one thread (and the CLI runs below get one too).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"

#: --set overrides that shrink recipes/toy2d.toml to a run of a few seconds on CPU
TINY = ["run.steps=30", "run.batch_size=64", "run.log_every=10", "run.checkpoint_every=10",
        "run.sample_every=0", "backbone.hidden=32", "backbone.depth=1", "method.warmup_ratio_steps=5",
        "dataset.num_points=2000", "metrics.energy-distance.num_samples=200", "run.min_free_disk_gb=0.01"]


def script(name: str) -> str:
    """Path of a console script installed beside the running interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} is not installed beside {sys.executable}: pip install -e . first")
    return str(path)


def run_cli(name: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONWARNINGS": "default", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([script(name), *args], capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=timeout)


def sets(*items: str) -> list[str]:
    out: list[str] = []
    for item in items:
        out += ["--set", item]
    return out


@pytest.fixture
def tiny_sets() -> list[str]:
    return sets(*TINY)


def assert_same(a: object, b: object, path: str = "") -> None:
    """Nested states (dicts, lists, tensors) are equal bit for bit; the message names the first difference."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def logged(output: str) -> dict[str, list[float]]:
    """Scalars of the console logger's ``step N: k=v ...`` lines."""
    values: dict[str, list[float]] = {}
    for line in output.splitlines():
        if re.match(r"^step \d+: ", line):
            for k, v in re.findall(r"(\S+)=(\S+)", line):
                values.setdefault(k, []).append(float(v))
    return values
