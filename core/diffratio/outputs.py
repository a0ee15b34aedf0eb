"""What a run writes besides checkpoints (main rank): sample pictures, metric evaluations, the final outputs.

Each draws from its own seeded random stream (``fork_rng``), so logging never changes training.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager

import torch
from torch import Tensor

from diffratio.components import EvalContext
from diffratio.run import Run
from diffratio.rundir import update_run_json
from diffratio.visualize import image_grid, save_png, scatter_image


def _forked(run: Run) -> AbstractContextManager[None]:
    device = run.ctx.device
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def visualize(run: Run, n: int = 1024) -> Tensor | None:
    """A picture of current samples: scatter over data for 2-D data, a grid for images."""
    ds = run.ctx.dataset
    with _forked(run):
        torch.manual_seed(run.ctx.settings.seed + 7)
        if ds.data_shape == (2,):
            return scatter_image(ds.reference(n), run.method.sample(n).float().cpu())
        samples = run.method.sample(64)
    images = ds.to_image(samples)
    return image_grid(images.cpu()) if images is not None else None


def evaluate(run: Run) -> dict[str, float]:
    """Every metric of the recipe on samples of the current model."""
    results: dict[str, float] = {}
    batch = max(run.ctx.settings.batch_size, 256)

    def sample(n: int) -> Tensor:
        return torch.cat([run.method.sample(min(batch, n - i)).float().cpu() for i in range(0, n, batch)])

    for name, metric in run.metrics.items():
        with _forked(run):
            torch.manual_seed(run.ctx.settings.seed + 11)
            ectx = EvalContext(sample=sample, dataset=run.ctx.dataset, device=run.ctx.device,
                               run_dir=str(run.run_dir), step=run.step)
            for k, v in metric.compute(ectx).items():
                results[f"{name}/{k}" if k != name else name] = float(v)
    return results


def log_samples(run: Run) -> None:
    """Save a picture of current samples under ``samples/`` and hand it to the loggers."""
    image = visualize(run)
    if image is not None:
        save_png(image, run.run_dir / "samples" / f"step-{run.step:09d}.png")
        for lg in run.loggers:
            lg.log_image(run.step, "samples", image)


def log_evaluation(run: Run) -> None:
    """Evaluate, append a line to ``metrics.jsonl`` and tell the hooks (``diffratio_on_evaluation``)."""
    results = evaluate(run)
    if results:
        line = {"step": run.step, "train_seconds": round(run.train_seconds, 3), **results}
        with open(run.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(line) + "\n")
        run.ctx.registry.pm.hook.diffratio_on_evaluation(run=run, step=run.step, results=results)
        print("eval " + " ".join(f"{k}={v:.5g}" for k, v in results.items()), flush=True)


def finish(run: Run) -> None:
    """The final samples and evaluation, then ``run.json`` records the run as finished at this step."""
    if run.ctx.strategy.is_main:
        log_samples(run)
        log_evaluation(run)
        update_run_json(run.run_dir, finished=run.step)
        print(f"finished {run.step} steps in {run.train_seconds:.1f} s of training; outputs in {run.run_dir}",
              flush=True)
    run.finished = True
