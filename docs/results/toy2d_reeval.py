"""Re-score finished toy2d runs with the energy-distance metric as it is now (floor = the expected two-sample
statistic, 20 draws) beside the figure their metrics.jsonl holds (floor = mean of five drawn pairs).

    python docs/results/toy2d_reeval.py RUN_DIR... > table.md

Each run's EMA generator at its latest checkpoint is sampled as the engine's evaluation does (seed + 11).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from diffratio import EvalContext
from diffratio.sampling import load_run
from diffratio_builtins.metrics.energy import EnergyDistance


def main(run_dirs: list[str]) -> None:
    torch.set_num_threads(1)
    metric = EnergyDistance(EnergyDistance.Config())
    print("| run | divergence | step | ratio recorded (five-draw floor) | energy distance (20 draws) "
          "| floor (expected) | floor sampled (20 pairs) | ratio | within 2x |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in run_dirs:
        run = load_run(d)
        lines = [json.loads(x) for x in (Path(d) / "metrics.jsonl").read_text().splitlines()]
        old = [x for x in lines if "energy-distance/ratio" in x][-1]

        def sample(n: int, run=run) -> torch.Tensor:  # in chunks as the engine's evaluation draws them
            bs = max(run.ctx.settings.batch_size, 256)
            return torch.cat([run.method.sample(min(bs, n - i)).float().cpu() for i in range(0, n, bs)])

        torch.manual_seed(run.ctx.settings.seed + 11)
        out = metric.compute(EvalContext(sample=sample, dataset=run.ctx.dataset, device=run.ctx.device,
                                         run_dir=d, step=run.step))
        div = json.loads((Path(d) / "run.json").read_text())["config"]["divergence"]["name"]
        print(f"| {Path(d).name} | {div} | {run.step} | {old['energy-distance/ratio']:.2f} "
              f"| {out['energy_distance']:.5f} | {out['floor']:.5f} | {out['floor_sampled']:.5f} "
              f"| {out['ratio']:.2f} | {'yes' if out['ratio'] <= 2 else 'no'} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
