"""Peak resident memory of the ImageNet-512 DiffRatio step on the CPU, with and without activation checkpointing.

A check, on the CPU, that ``backbone.activation_checkpointing`` lowers a real peak and not only the count of
saved bytes (saved_bytes.py): each setting runs in a process of its own (DiT-XL/2 generator and 14-block
estimator in fp32, batch 2, single-device CPU strategy; the optimiser updates are skipped, as in
saved_bytes.py), one ratio step and one generator step, and reports the process's peak resident set size
(``ru_maxrss``) after building the run and after the two steps. The difference is the steps' own peak:
activations, gradients and temporaries.

    PYTHONPATH=core:plugins python docs/results/memory/peak_rss.py > docs/results/memory/peak_rss.md
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from diffratio import Trainable
from diffratio.engine import build_run
from diffratio.registry import default_registry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from saved_bytes import ROOT, SETS, tp  # noqa: E402

BATCH = 2


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def row(flag: str) -> None:
    torch.manual_seed(0)
    sets = [*SETS, f"run.batch_size={BATCH}", f"backbone.activation_checkpointing={flag}"]
    resolved = tp.row_recipe(str(ROOT / "recipes" / "imagenet512.toml"), sets, "diffratio")
    with tempfile.TemporaryDirectory() as tmp:
        method = build_run(resolved, Path(tmp), default_registry()).method
        for trainable in vars(method).values():
            if isinstance(trainable, Trainable):
                trainable.step = lambda: {"grad_norm": torch.zeros(())}
        built = peak_gib()
        method.ratio_step()
        method.generator_step(0)
        after = peak_gib()
    print(f"| {flag} | {BATCH} | {built:.2f} | {after:.2f} | {after - built:.2f} |", flush=True)


def main() -> None:
    print("| activation checkpointing | batch | peak RSS after building (GiB) | after a ratio and a generator step |"
          " the steps' own |")
    print("|---|---|---|---|---|")
    for flag in ("false", "true"):
        subprocess.run([sys.executable, __file__, flag], check=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        row(sys.argv[1])
    else:
        main()
