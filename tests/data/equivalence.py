"""Hashes of every tensor in the final checkpoints of short toy2d runs (pretraining, DiffRatio, VSD).

``python tests/data/equivalence.py OUT.json [--warmup-as-steps]`` trains the three toy2d recipes for a few
steps on one CPU thread in a temporary folder and writes, per run, the SHA-256 of each tensor of the final
checkpoint's method state. ``tests/data/toy2d_reference.json`` was written this way by the engine before
the ratio/fake-score warm-up became steps of the loop; ``tests/test_equivalence.py`` compares the current
engine against it (a warm-up of W steps now takes W loop steps, so those runs are W steps longer).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
STEPS = {"toy2d-pretrain": 40, "toy2d": 30, "toy2d-vsd": 30}
WARMUP = {"toy2d": 100, "toy2d-vsd": 100}  # the recipes' warm-up steps (ratio / fake score)
COMMON = ["--set", "run.batch_size=256", "--set", "strategy.threads=1", "--set", "run.log_every=10",
          "--set", "run.checkpoint_every=1000", "--set", "run.sample_every=0"]


def tensor_hashes(state: object, prefix: str = "") -> dict[str, str]:
    """SHA-256 of every tensor in a nested state dict, keyed by its dotted path."""
    out: dict[str, str] = {}
    if isinstance(state, torch.Tensor):
        t = state.detach().cpu().contiguous().reshape(-1)
        out[prefix] = hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()
    elif isinstance(state, dict):
        for k, v in state.items():
            out.update(tensor_hashes(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(state, list | tuple):
        for i, v in enumerate(state):
            out.update(tensor_hashes(v, f"{prefix}.{i}"))
    return out


def final_state(run_dir: Path) -> dict:
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    return torch.load(run_dir / "checkpoints" / latest / "state.pt", map_location="cpu", weights_only=False)


def generator_tensors(hashes: dict[str, str]) -> dict[str, str]:
    """The trained weights and EMA (optimiser moments included), leaving out step counters."""
    return {k: v for k, v in hashes.items() if not k.endswith(".step")}


def main(out: Path, warmup_as_steps: bool) -> None:
    result: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        pre = Path(tmp) / "toy2d-pretrain"
        for name, steps in STEPS.items():
            if warmup_as_steps:
                steps += WARMUP.get(name, 0)
            run_dir = Path(tmp) / name
            cmd = ["dr-train", str(ROOT / "recipes" / f"{name}.toml"), "--run-dir", str(run_dir), "--no-progress",
                   "--set", f"run.steps={steps}", *COMMON]
            if name != "toy2d-pretrain":
                cmd += ["--set", f'method.init="{pre}"']
            subprocess.run(cmd, check=True, env=env, cwd=tmp, stdout=subprocess.DEVNULL)
            result[name] = generator_tensors(tensor_hashes(final_state(run_dir)["method"]))
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--warmup-as-steps" in sys.argv[2:])
