"""Sampling from a trained run: build its inference networks from its config and weights, and draw.

A run is either a run directory (``run.json`` and ``checkpoints/``) or a single-file export written by
``export_run``: the run's config, its data's description and the method's inference weights (for
``diffratio``: the generator EMA and the ratio estimator, all that sampling with the verifier needs).
Neither builds an optimiser or loads training data (``diffratio.inference``).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from diffratio import checkpoint as ckpt
from diffratio.errors import DiffRatioError
from diffratio.inference import EXPORT_FORMAT, Loaded, export_sampler, load_sampler
from diffratio.longjob import progress
from diffratio.registry import Registry
from diffratio.verifier import Select, run_verifier, sample_with_verifier, verifier_sigma_of
from diffratio.visualize import image_grid, save_png, scatter_image


def export_run(run_dir: str | Path, out: str | Path, registry: Registry | None = None) -> Path:
    """Write the run's latest inference weights to one file ``out`` (``.pt``, written atomically).

    Keys: ``format``, ``config`` (run.json's resolved config), ``recipe_text``, ``step``, ``data`` (shape,
    label count, sigma_data) and ``weights`` (``Sampler.export()``: for ``diffratio`` the generator EMA that
    ``dr-sample`` draws from and the ratio estimator that scores ``--candidates``). ``load_sampler(out)``
    reads it back.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise DiffRatioError(f"{run_dir} is a file; export needs the run directory that dr-train wrote")
    loaded = load_sampler(run_dir, registry)
    info = json.loads((run_dir / "run.json").read_text())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(export_sampler(loaded, info.get("recipe_text", "")), buf)
    ckpt.write_atomic(out, buf.getvalue())
    return out


def draw(run: Loaded, num: int, *, seed: int = 0, batch: int = 500, candidates: int = 1, select: Select = "sir",
         verifier_sigma: float | None = None, temperature: float = 1.0) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """``num`` samples of a loaded run (float, CPU), and the verifier's diagnostics when ``candidates > 1``.

    ``candidates = 1`` is the method's own sampler (``Sampler.sample``). Otherwise each output is selected
    from ``candidates`` one-step samples by the ratio estimator (``diffratio.verifier``), in chunks of
    ``batch // candidates`` outputs so that each network pass holds at most ``batch`` samples. The
    diagnostics are ``log_weights`` (num, candidates), ``chosen`` (num,) and ``ess`` (num,).
    ``verifier_sigma`` None is the run's own (``diffratio.verifier.verifier_sigma_of``); ``temperature``
    divides the log weights (``diffratio.verifier.sample_with_verifier``).
    """
    if candidates < 1:
        raise DiffRatioError(f"candidates must be >= 1, got {candidates}")
    torch.manual_seed(seed)
    if candidates == 1:
        chunks = []
        with progress(num, "sampling", enabled=num > batch) as bar:
            for i in range(0, num, batch):
                chunks.append(run.sampler.sample(min(batch, num - i)).float().cpu())
                if bar is not None:
                    bar.update(len(chunks[-1]))
        return torch.cat(chunks), {}
    ctx = run.ctx
    generate, log_ratio = run_verifier(run.sampler, ctx.strategy.autocast)
    sigma_v = verifier_sigma_of(run.sampler) if verifier_sigma is None else verifier_sigma
    assert run.sampler.generator is not None  # run_verifier refuses samplers without one
    latent_shape = run.sampler.generator.latent_shape(ctx.data_shape)
    rng = torch.Generator().manual_seed(seed)
    per = max(1, batch // candidates)
    samples, diag = [], {"log_weights": [], "chosen": [], "ess": []}
    with progress(num, f"sampling ({candidates} candidates each)", enabled=num > per) as bar:
        for i in range(0, num, per):
            n = min(per, num - i)
            out = sample_with_verifier(generate, log_ratio, num=n, candidates=candidates, latent_shape=latent_shape,
                                       select=select, sigma_v=sigma_v, labels=_labels(ctx.num_labels, n, ctx.device),
                                       rng=rng, device=ctx.device, max_batch=batch, temperature=temperature)
            samples.append(out.samples.float().cpu())
            diag["log_weights"].append(out.log_weights)
            diag["chosen"].append(out.chosen)
            diag["ess"].append(out.ess)
            if bar is not None:
                bar.update(n)
    return torch.cat(samples), {k: torch.cat(v).numpy() for k, v in diag.items()}


def _labels(num_labels: int, n: int, device: torch.device) -> torch.Tensor | None:
    """Uniform class labels (drawn like the training loop's), or None for unconditional data."""
    return None if num_labels == 0 else torch.randint(num_labels, (n,), device=device)


def sample_run(run_dir: str | Path, *, num: int, out: str | Path, grid: str | Path | None = None,
               seed: int = 0, batch: int = 500, candidates: int = 1, select: Select = "sir",
               verifier_sigma: float | None = None, temperature: float = 1.0) -> Path:
    """Write ``num`` samples to ``out``: uint8 ``images`` (N, C, H, W) for image data, else float ``samples``.

    ``run_dir`` is a run directory or an export (``export_run``). With ``candidates > 1`` the file also
    holds the verifier's ``log_weights``, ``chosen`` and ``ess`` (see ``draw``).
    """
    run = load_sampler(run_dir)
    sigma_v = verifier_sigma_of(run.sampler) if verifier_sigma is None else verifier_sigma
    start = time.perf_counter()
    samples, diagnostics = draw(run, num, seed=seed, batch=batch, candidates=candidates, select=select,
                                verifier_sigma=sigma_v, temperature=temperature)
    seconds = time.perf_counter() - start
    # 2-D and other flat data are written as float samples without building the data set; for the others
    # the data set decides (uint8 images, decoded latents, or None)
    images = run.ctx.dataset.to_image(samples) if len(run.ctx.data_shape) > 1 else None
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
    how = "" if candidates == 1 else (f", {select} of {candidates} candidates each (verifier sigma {sigma_v:g}"
                                      + (f", temperature {temperature:g}" if select == "sir" else "")
                                      + f", mean ESS {float(diagnostics['ess'].mean()):.2f})")
    print(f"wrote {num} samples of step {run.step}{how} to {out}" + (f" and {grid}" if grid else "")
          + f"; sampling took {seconds:.2f} s ({1e3 * seconds / num:.3f} ms per sample)")
    return out


__all__ = ["EXPORT_FORMAT", "draw", "export_run", "load_sampler", "sample_run"]
