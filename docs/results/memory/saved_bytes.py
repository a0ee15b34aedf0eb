"""Bytes each training step of the ImageNet-512 recipe keeps for its backward pass, per sample, on the CPU.

Builds DiffRatio and VSD from recipes/imagenet512.toml (DiT-XL/2 on 64x64x4 synthetic latents) with
benchmarks/throughput.py's row recipe, on the single-device CPU strategy in fp32 at batch 1, and counts the bytes
of every tensor autograd saves during each phase (``torch.autograd.graph.saved_tensors_hooks``), with and
without ``backbone.activation_checkpointing`` (and DiffRatio with the 7-block estimator). Parameters that
autograd saves by reference are not activations (the peak holds them anyway) and are left out. The optimiser
updates are skipped (no Adam states: the CPU machine's 24 GiB). In bf16 each activation takes half these bytes;
they grow in proportion to the batch.

    PYTHONPATH=core:plugins python docs/results/memory/saved_bytes.py > docs/results/memory/saved_bytes.md
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from diffratio import Trainable
from diffratio.engine import build_run
from diffratio.registry import default_registry

ROOT = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
tp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tp)

SETS = ["dataset.name=synthetic-latents", "run.batch_size=1", "strategy.name=single", "strategy.device='cpu'",
        "strategy.precision='fp32'", "loggers.tensorboard=false", "run.min_free_disk_gb=0.01"]
PHASES = {"diffratio": ("ratio_step", "generator_step"), "vsd": ("fake_step", "generator_step")}


def counted(method: Any, name: str, params: set[int]) -> float:
    """GiB saved for backward while ``method.<name>`` runs its forward passes (parameters excluded)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    step = getattr(method, name)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(0) if name == "generator_step" else step()
    return total / 2**30


def rows(method_name: str, flag: str, extra: list[str]) -> None:
    """One method and setting (a process of its own: three DiT-XL/2 networks in fp32 take 8 GiB)."""
    torch.manual_seed(0)
    resolved = tp.row_recipe(str(ROOT / "recipes" / "imagenet512.toml"),
                             [*SETS, f"backbone.activation_checkpointing={flag}", *extra], method_name)
    with tempfile.TemporaryDirectory() as tmp:
        method = build_run(resolved, Path(tmp), default_registry()).method
        if method_name == "vsd":
            method.teacher_loaded = True
        for trainable in vars(method).values():  # no optimiser updates: no Adam states (memory), no change
            if isinstance(trainable, Trainable):
                trainable.step = lambda: {"grad_norm": torch.zeros(())}
        nets = tp.networks(method)
        params = {p.data_ptr() for net in nets for p in net.parameters()}
        sizes = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in method.parameter_counts().items())
        for phase in PHASES[method_name]:
            gib = counted(method, phase, params)
            for net in nets:
                net.zero_grad(set_to_none=True)
            print(f"| {method_name} | {' '.join(extra) or '-'} | {flag} | {phase} | {gib:.3f} | {sizes} |", flush=True)


def main() -> None:
    print("| method | settings | activation checkpointing | phase | GiB saved at batch 1 (fp32) | parameters (M) |")
    print("|---|---|---|---|---|---|")
    for method_name, extra in (("diffratio", []), ("diffratio", ["backbone.encoder_depth=7"]), ("vsd", [])):
        for flag in ("false", "true"):
            subprocess.run([sys.executable, __file__, method_name, flag, *extra], check=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        rows(sys.argv[1], sys.argv[2], sys.argv[3:])
    else:
        main()
