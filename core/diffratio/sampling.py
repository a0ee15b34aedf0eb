"""Sampling from a trained run: rebuild its method from run.json, load the latest checkpoint, draw."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import numpy as np
import torch

from diffratio import checkpoint as ckpt
from diffratio.engine import Run, build_run
from diffratio.errors import DiffRatioError
from diffratio.recipe import Recipe, resolve_recipe
from diffratio.registry import Registry, default_registry
from diffratio.visualize import image_grid, save_png, scatter_image


def load_run(run_dir: str | Path, registry: Registry | None = None) -> Run:
    """Rebuild the run in ``run_dir`` and load its latest checkpoint (for sampling and evaluation)."""
    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.exists():
        raise DiffRatioError(f"{run_dir} is not a run directory (no run.json); give the folder dr-train wrote")
    registry = registry or default_registry()
    info = json.loads(info_path.read_text())
    recipe: Recipe = resolve_recipe(info["config"], registry=registry, text=info.get("recipe_text", ""),
                                    source=str(info_path))
    method = recipe.components["method"]
    if attrs.has(type(method.config)) and "init" in attrs.fields_dict(type(method.config)):
        # the checkpoint holds the trained weights; the pretraining source is not needed again
        recipe.components["method"] = attrs.evolve(method, config=attrs.evolve(method.config, init=""))
    run = build_run(recipe, run_dir, registry)
    latest = ckpt.find_latest(run_dir / "checkpoints")
    if latest is None:
        raise DiffRatioError(f"{run_dir} has no checkpoint yet; train first (dr-train ...)")
    state = ckpt.load_state(latest, map_location=run.ctx.device)
    run.method.load_state_dict(state["method"])
    run.step = int(state["step"])
    return run


def sample_run(run_dir: str | Path, *, num: int, out: str | Path, grid: str | Path | None = None,
               seed: int = 0, batch: int = 500) -> Path:
    """Write ``num`` samples to ``out``: uint8 ``images`` (N, C, H, W) for image data, else float ``samples``."""
    run = load_run(run_dir)
    torch.manual_seed(seed)
    chunks = [run.method.sample(min(batch, num - i)).float().cpu() for i in range(0, num, batch)]
    samples = torch.cat(chunks)
    images = run.ctx.dataset.to_image(samples)
    # image data: uint8 images (what FID reads); other data: the float samples themselves
    arrays = {"images": images.numpy()} if images is not None else {"samples": samples.numpy()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    if grid is not None:
        if images is not None:
            save_png(image_grid(images[:100], ncol=10), grid)
        elif samples.shape[1:] == (2,):
            save_png(scatter_image(run.ctx.dataset.reference(num), samples), grid)
    print(f"wrote {num} samples of step {run.step} to {out}" + (f" and {grid}" if grid else ""))
    return out
