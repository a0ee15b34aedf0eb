"""Mode statistics of trained toy2d runs: the share of samples between the ring's modes, each mode's weight
among the on-mode samples, and each mode's spread (docs/results.md section 1).

    python docs/results/toy2d_modes.py RUN_DIR... > table.md

100,000 samples of each run's EMA generator; "between" = further than 4 component standard deviations from
every centre; spread = root mean squared distance to the mode's centre per coordinate (the data's: its std).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from diffratio.sampling import draw, load_run


def main(run_dirs: list[str]) -> None:
    torch.set_num_threads(1)
    print("| run | between the modes | mode weights (on-mode share; equal = 0.125) | largest departure from equal "
          "| mode spreads (data: std) |")
    print("|---|---|---|---|---|")
    for d in run_dirs:
        run = load_run(d)
        ring = run.ctx.dataset
        centres, std = ring.mixture.means.float(), float(ring.config.std)
        x, _ = draw(run, 100_000, seed=1)
        dist, idx = torch.cdist(x, centres).min(dim=1)
        on = dist <= 4 * std
        k = len(centres)
        w = torch.bincount(idx[on], minlength=k).float() / on.sum()
        spread = [float((x[on & (idx == j)] - centres[j]).pow(2).sum(1).mean().div(2).sqrt()) for j in range(k)]
        print(f"| {Path(d).name} | {(~on).float().mean():.2%} | {' '.join(f'{v:.3f}' for v in w)} | "
              f"{float((w * k - 1).abs().max()):.1%} | {' '.join(f'{v:.3f}' for v in spread)} (data {std}) |",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
