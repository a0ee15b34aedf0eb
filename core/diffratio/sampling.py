"""Sampling from a trained run: rebuild its method from run.json, load the latest checkpoint, draw.

A run is either a run directory (``run.json`` and ``checkpoints/``) or a single-file export written by
``export_run``: the run's config with the generator EMA and the ratio estimator's weights, all that
sampling with the verifier (``diffratio.verifier``) needs besides the data set's definition.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn

from diffratio import checkpoint as ckpt
from diffratio.components import Generator, RatioEstimator
from diffratio.engine import Run, build_run
from diffratio.errors import DiffRatioError
from diffratio.recipe import Recipe, Resolved, resolve_recipe
from diffratio.registry import Registry, default_registry
from diffratio.verifier import Select, run_verifier, sample_with_verifier, verifier_sigma_of
from diffratio.visualize import image_grid, save_png, scatter_image

#: ``format`` tag of the single-file export (bump when its keys change meaning)
EXPORT_FORMAT = "diffratio-export/1"


def _build_for_sampling(config: dict[str, Any], text: str, source: str, run_dir: Path,
                        registry: Registry) -> Run:
    """Rebuild a run's method from its resolved config, without pretraining source or loggers."""
    recipe: Recipe = resolve_recipe(config, registry=registry, text=text, source=source)
    method = recipe.components["method"]
    if attrs.has(type(method.config)) and "init" in attrs.fields_dict(type(method.config)):
        # the checkpoint holds the trained weights; the pretraining source is not needed again
        recipe.components["method"] = attrs.evolve(method, config=attrs.evolve(method.config, init=""))
    strategy = recipe.components["strategy"]
    if strategy.name != "single":
        # a run trained by several processes (ddp, deepspeed) samples in one: state.pt holds full weights
        single = registry.get("strategy", "single").cls
        keep = {k: getattr(strategy.config, k) for k in ("device", "precision") if hasattr(strategy.config, k)}
        recipe.components["strategy"] = Resolved(kind="strategy", name="single", cls=single,
                                                 config=single.Config(**keep))
    # sampling logs nothing: no tensorboard event files are added to the run directory
    recipe = attrs.evolve(recipe, loggers={})
    return build_run(recipe, run_dir, registry)


def load_run(path: str | Path, registry: Registry | None = None, *, step: int | None = None) -> Run:
    """Rebuild a run and load its weights (for sampling and evaluation).

    ``path`` is a run directory (its latest checkpoint is loaded, or the one of ``step``: evaluating a
    run along its training needs the earlier ones) or a ``.pt`` file written by ``export_run``
    (generator EMA and ratio estimator only; the optimisers and the raw generator are not in it, so such
    a run samples but does not resume training). ``run.train_seconds`` is the checkpoint's training time.
    """
    path = Path(path)
    registry = registry or default_registry()
    if path.is_file():
        if step is not None:
            raise DiffRatioError(f"{path} is an export of one step; step={step} needs a run directory")
        return _load_export(path, registry)
    info_path = path / "run.json"
    if not info_path.exists():
        raise DiffRatioError(f"{path} is not a run directory (no run.json); give the folder dr-train wrote "
                             "or a file written by dr-sample --export")
    info = json.loads(info_path.read_text())
    run = _build_for_sampling(info["config"], info.get("recipe_text", ""), str(info_path), path, registry)
    if step is None:
        chosen = ckpt.find_latest(path / "checkpoints")
        if chosen is None:
            raise DiffRatioError(f"{path} has no checkpoint yet; train first (dr-train ...)")
    else:
        steps = {int(p.name): p for p in ckpt.list_checkpoints(path / "checkpoints")}
        if step not in steps:
            raise DiffRatioError(f"{path} has no checkpoint of step {step}; it has steps {sorted(steps) or 'none'} "
                                 "(run.keep_checkpoints = 0 keeps every one)")
        chosen = steps[step]
        problem = ckpt.verify_checkpoint(chosen)
        if problem:
            raise DiffRatioError(f"checkpoint {chosen} is damaged: {problem}")
    state = ckpt.load_state(chosen, map_location=run.ctx.device)
    run.method.load_state_dict(state["method"])
    run.step = int(state["step"])
    run.train_seconds = float(state.get("train_seconds", 0.0))
    return run


def _sampling_modules(run: Run) -> tuple[Generator, RatioEstimator | None]:
    """The generator EMA (``method.ema``) and the ratio estimator (``method.ratio.raw``) if there is one."""
    method = run.method
    name = getattr(type(method), "registered_name", "") or type(method).__name__
    ema = getattr(method, "ema", None)
    if not isinstance(ema, Generator):
        raise DiffRatioError(f"method {name!r} has no one-step generator EMA (method.ema); a single-file "
                             "export is for one-step generator methods (diffratio, vsd)")
    ratio = getattr(getattr(method, "ratio", None), "raw", None)
    return ema, ratio if isinstance(ratio, RatioEstimator) else None


def export_run(run_dir: str | Path, out: str | Path, registry: Registry | None = None) -> Path:
    """Write the run's latest weights for sampling to one file ``out`` (``.pt``, written atomically).

    Keys: ``format``, ``config`` (run.json's resolved config), ``recipe_text``, ``step``,
    ``generator_ema`` (the weights ``dr-sample`` draws from) and ``ratio`` (the ratio estimator, the
    verifier of ``--candidates``; absent for methods without one). ``load_run(out)`` reads it back.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise DiffRatioError(f"{run_dir} is a file; export needs the run directory that dr-train wrote")
    run = load_run(run_dir, registry)
    ema, ratio = _sampling_modules(run)
    info = json.loads((run_dir / "run.json").read_text())
    state: dict[str, Any] = {"format": EXPORT_FORMAT, "config": info["config"],
                             "recipe_text": info.get("recipe_text", ""), "step": run.step,
                             "generator_ema": _cpu_state(ema)}
    if ratio is not None:
        state["ratio"] = _cpu_state(ratio)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    ckpt.write_atomic(out, buf.getvalue())
    return out


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def _load_export(path: Path, registry: Registry) -> Run:
    state = ckpt.load_state(path)
    if not isinstance(state, dict) or state.get("format") != EXPORT_FORMAT:
        raise DiffRatioError(f"{path} is not a diffratio export (format {EXPORT_FORMAT!r}); write one with "
                             "`dr-sample RUN_DIR --export FILE.pt`, or give a run directory")
    run = _build_for_sampling(state["config"], state.get("recipe_text", ""), str(path), path.parent, registry)
    ema, ratio = _sampling_modules(run)
    ema.load_state_dict(state["generator_ema"])
    if "ratio" in state:
        if ratio is None:
            raise DiffRatioError(f"{path} holds ratio weights but its method has no ratio estimator")
        ratio.load_state_dict(state["ratio"])
    run.step = int(state["step"])
    return run


def draw(run: Run, num: int, *, seed: int = 0, batch: int = 500, candidates: int = 1, select: Select = "sir",
         verifier_sigma: float | None = None) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """``num`` samples of a loaded run (float, CPU), and the verifier's diagnostics when ``candidates > 1``.

    ``candidates = 1`` is the method's own sampler (``method.sample``). Otherwise each output is selected
    from ``candidates`` one-step samples by the ratio estimator (``diffratio.verifier``), in chunks of
    ``batch // candidates`` outputs so that each network pass holds at most ``batch`` samples. The
    diagnostics are ``log_weights`` (num, candidates), ``chosen`` (num,) and ``ess`` (num,).
    ``verifier_sigma`` None is the run's own (``diffratio.verifier.verifier_sigma_of``).
    """
    if candidates < 1:
        raise DiffRatioError(f"candidates must be >= 1, got {candidates}")
    torch.manual_seed(seed)
    if candidates == 1:
        chunks = [run.method.sample(min(batch, num - i)).float().cpu() for i in range(0, num, batch)]
        return torch.cat(chunks), {}
    generate, log_ratio = run_verifier(run)
    sigma_v = verifier_sigma_of(run) if verifier_sigma is None else verifier_sigma
    ctx = run.ctx
    latent_shape = run.method.ema.latent_shape(ctx.data_shape)
    rng = torch.Generator().manual_seed(seed)
    per = max(1, batch // candidates)
    samples, diag = [], {"log_weights": [], "chosen": [], "ess": []}
    for i in range(0, num, per):
        n = min(per, num - i)
        out = sample_with_verifier(generate, log_ratio, num=n, candidates=candidates, latent_shape=latent_shape,
                                   select=select, sigma_v=sigma_v, labels=ctx.random_labels(n), rng=rng,
                                   device=ctx.device, max_batch=batch)
        samples.append(out.samples.float().cpu())
        diag["log_weights"].append(out.log_weights)
        diag["chosen"].append(out.chosen)
        diag["ess"].append(out.ess)
    return torch.cat(samples), {k: torch.cat(v).numpy() for k, v in diag.items()}


def sample_run(run_dir: str | Path, *, num: int, out: str | Path, grid: str | Path | None = None,
               seed: int = 0, batch: int = 500, candidates: int = 1, select: Select = "sir",
               verifier_sigma: float | None = None) -> Path:
    """Write ``num`` samples to ``out``: uint8 ``images`` (N, C, H, W) for image data, else float ``samples``.

    ``run_dir`` is a run directory or an export (``export_run``). With ``candidates > 1`` the file also
    holds the verifier's ``log_weights``, ``chosen`` and ``ess`` (see ``draw``).
    """
    run = load_run(run_dir)
    sigma_v = verifier_sigma_of(run) if verifier_sigma is None else verifier_sigma
    start = time.perf_counter()
    samples, diagnostics = draw(run, num, seed=seed, batch=batch, candidates=candidates, select=select,
                                verifier_sigma=sigma_v)
    seconds = time.perf_counter() - start
    images = run.ctx.dataset.to_image(samples)
    # image data: uint8 images (what FID reads); other data: the float samples themselves
    arrays = {"images": images.numpy()} if images is not None else {"samples": samples.numpy()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays, **diagnostics)
    if grid is not None:
        if images is not None:
            save_png(image_grid(images[:100], ncol=10), grid)
        elif samples.shape[1:] == (2,):
            save_png(scatter_image(run.ctx.dataset.reference(num), samples), grid)
    how = "" if candidates == 1 else (f", {select} of {candidates} candidates each (verifier sigma "
                                      f"{sigma_v:g}, mean ESS {float(diagnostics['ess'].mean()):.2f})")
    print(f"wrote {num} samples of step {run.step}{how} to {out}" + (f" and {grid}" if grid else "")
          + f"; sampling took {seconds:.2f} s ({1e3 * seconds / num:.3f} ms per sample)")
    return out
