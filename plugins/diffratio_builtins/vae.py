"""The VAE of latent training: a local AutoencoderKL (diffusers format) that encodes images into latent
shards once, before training, and decodes generated latents into images afterwards.

    python -m diffratio_builtins.vae encode IMAGES OUT_DIR --vae VAE_DIR [--resolution 512 --center-crop]
    python -m diffratio_builtins.vae decode SAMPLES.npz OUT.npz --vae VAE_DIR --run RUN_DIR [--grid PNG]

``VAE_DIR`` is a folder holding ``config.json`` and the weights (``diffusion_pytorch_model.safetensors``),
e.g. a copy of ``stabilityai/sd-vae-ft-mse`` (the VAE of EDM2's ImageNet 512x512 latents). Nothing is
downloaded: the folder is read with ``local_files_only``. ``diffusers`` is imported only here, lazily.

``encode`` reads an image folder (class subfolders become labels), an EDM-style zip or an ``.npz`` of
images in chunks, so ImageNet never sits in memory whole, and writes ``.npy`` shards
(``diffratio_builtins.datasets.shards``) of the posterior means (``latents``), standard deviations
(``std``) and ``labels`` in raw VAE units, plus
``meta.json`` with the per-channel statistics of the means (the ``latents`` data set's ``channel_mean`` /
``channel_std``). ``decode`` turns the float ``samples`` that ``dr-sample`` writes for latent runs into
uint8 ``images`` with the run's own scaling.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import click
import numpy as np
import torch
from torch import Tensor

from diffratio import DataError, DiffRatioError, MissingDependencyError, resolve_device
from diffratio.cli import friendly_errors
from diffratio.dataset_tool import ImageArrays, iter_image_source
from diffratio_builtins.datasets.shards import write_shard

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INSTALL = "pip install diffusers safetensors"


class VAE:
    """An AutoencoderKL-like model: ``model.encode(x).latent_dist.{mean,std}`` and ``model.decode(z).sample``
    (the diffusers interface), for images in [-1, 1] with three channels.

    ``encode`` takes uint8 images (B, C, H, W) (grey images are repeated to RGB) and returns the raw posterior
    mean and std as float32 on CPU; ``decode`` takes raw latents and returns uint8 images on CPU. Both run in
    batches of ``batch`` on ``device``; ``precision`` bf16/fp16 runs the network under autocast (GPU).
    """

    def __init__(self, model: Any, *, device: str | torch.device = "cpu", precision: Precision = "fp32",
                 batch: int = 16) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval() if hasattr(model, "to") else model
        if hasattr(self.model, "requires_grad_"):
            self.model.requires_grad_(False)
        self.precision = precision
        self.batch = batch

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "auto", precision: Precision = "fp32",
             batch: int = 16, what: str = "the VAE") -> VAE:
        """Load a local diffusers AutoencoderKL folder; clear errors for no path, a wrong path or no diffusers."""
        if not str(path):
            raise DataError(f"{what} needs a local AutoencoderKL: the folder with config.json and "
                            "diffusion_pytorch_model.safetensors (diffusers format, e.g. a copy of "
                            "stabilityai/sd-vae-ft-mse); give its path (--vae DIR or dataset.vae = DIR)")
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"{what}: {p} does not exist (expected a local AutoencoderKL folder with config.json "
                            "and diffusion_pytorch_model.safetensors)")
        if not p.is_dir() or not (p / "config.json").exists():
            raise DataError(f"{what}: {p} is not a diffusers model folder (no config.json in it); give the folder "
                            "that holds config.json and the weights, not a single checkpoint file")
        try:
            from diffusers import AutoencoderKL
        except ImportError as exc:
            raise MissingDependencyError("diffusers", what, INSTALL) from exc
        try:
            model = AutoencoderKL.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise DataError(f"{what}: cannot load an AutoencoderKL from {p} ({type(exc).__name__}: {exc})") from exc
        return cls(model, device=device, precision=precision, batch=batch)

    @property
    def scaling_factor(self) -> float | None:
        """The model's own raw-to-unit factor (0.18215 for Stable Diffusion's VAE), if its config has one."""
        value = getattr(getattr(self.model, "config", None), "scaling_factor", None)
        return float(value) if value is not None else None

    def _autocast(self) -> Any:
        dtype = _DTYPES[self.precision]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32)

    @torch.no_grad()
    def encode(self, images: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        """uint8 (B, C, H, W) images -> raw posterior (mean, std), float32 (B, C', H/f, W/f) on CPU."""
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"VAE.encode: expected uint8 images (B, 1 or 3, H, W), got {images.dtype} "
                            f"{tuple(images.shape)}")
        means, stds = [], []
        for part in images.split(self.batch):
            x = part.to(self.device).float().div_(127.5).sub_(1.0)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            with self._autocast():
                dist = self.model.encode(x).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
        return torch.cat(means), torch.cat(stds)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Raw latents (B, C', h, w) -> uint8 images (B, 3, H, W) on CPU."""
        out = []
        for part in latents.split(self.batch):
            with self._autocast():
                x = self.model.decode(part.to(self.device).float()).sample
            out.append(((x.float() + 1.0) * 127.5).clamp_(0, 255).round_().to(torch.uint8).cpu())
        return torch.cat(out)


# --------------------------------------------------------------------------------------------------
# Encoding a data set into shards
# --------------------------------------------------------------------------------------------------


class ShardWriter:
    """Collects encoded items and writes ``latents-NNNNN`` shards of ``shard_size`` items atomically,
    keeping running per-channel sums of the means for ``meta.json``."""

    def __init__(self, dest: Path, shard_size: int, dtype: np.dtype, keep_std: bool) -> None:
        self.dest, self.shard_size, self.dtype, self.keep_std = dest, shard_size, np.dtype(dtype), keep_std
        self.pending: dict[str, list[np.ndarray]] = {"latents": [], "std": [], "labels": []}
        self.pending_n = 0
        self.shards: list[str] = []
        self.count = 0
        self.sums: np.ndarray | None = None
        self.squares: np.ndarray | None = None
        self.values = 0  # latent values per channel summed so far

    def add(self, mean: Tensor, std: Tensor, labels: np.ndarray | None) -> None:
        m = mean.numpy()
        if not np.isfinite(m).all() or (self.keep_std and not np.isfinite(std.numpy()).all()):
            raise DataError(f"the VAE gave non-finite latents for items {self.count}..{self.count + len(m) - 1}; "
                            "try --precision fp32")
        flat = m.astype(np.float64).transpose(1, 0, 2, 3).reshape(m.shape[1], -1)
        self.sums = flat.sum(1) + (self.sums if self.sums is not None else 0)
        self.squares = (flat * flat).sum(1) + (self.squares if self.squares is not None else 0)
        self.values += flat.shape[1]
        self.pending["latents"].append(m.astype(self.dtype))
        if self.keep_std:
            self.pending["std"].append(std.numpy().astype(self.dtype))
        if labels is not None:
            self.pending["labels"].append(labels.astype(np.int64))
        self.pending_n += len(m)
        self.count += len(m)
        while self.pending_n >= self.shard_size:
            self.flush(self.shard_size)

    def flush(self, n: int | None = None) -> None:
        """Write the first ``n`` pending items (all when None) as the next shard."""
        if not self.pending_n:
            return
        arrays = {k: np.concatenate(v) for k, v in self.pending.items() if v}
        n = self.pending_n if n is None else n
        out = {k: a[:n] for k, a in arrays.items()}
        self.pending = {k: ([arrays[k][n:]] if k in arrays and len(arrays[k]) > n else []) for k in self.pending}
        self.pending_n -= n
        name = f"latents-{len(self.shards):05d}"
        write_shard(self.dest, name, out)
        self.shards.append(name)

    def channel_stats(self) -> tuple[list[float], list[float]]:
        assert self.sums is not None and self.squares is not None
        mean = self.sums / self.values
        std = np.sqrt(np.maximum(self.squares / self.values - mean * mean, 0.0))
        return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def encode_dataset(vae: VAE, chunks: Iterator[ImageArrays], dest: str | Path, *, shard_size: int = 10_000,
                   dtype: str = "float16", keep_std: bool = True, info: dict[str, Any] | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Encode image chunks (``dataset_tool.iter_image_source``) into latent shards under ``dest``.

    ``dest`` must be empty or new. Returns the ``meta.json`` written there: item count, latent shape, shard
    names, per-channel mean/std of the raw means (paste them into a recipe's ``channel_mean`` /
    ``channel_std``), the VAE's scaling factor, class names and ``info`` (e.g. the source and resolution).
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DataError(f"{dest} exists and is not an empty folder; choose a new output folder for the shards")
    dest.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(dest, shard_size, np.dtype(dtype), keep_std)
    shape: tuple[int, ...] | None = None
    class_names: tuple[str, ...] | None = None
    labelled: bool | None = None
    start = time.perf_counter()
    for arrays in chunks:
        images = torch.from_numpy(np.ascontiguousarray(arrays.images.transpose(0, 3, 1, 2)))
        mean, std = vae.encode(images)
        shape = tuple(mean.shape[1:])
        labelled = arrays.labels is not None if labelled is None else labelled
        class_names = class_names or arrays.class_names
        writer.add(mean, std, arrays.labels if labelled else None)
        if progress:
            rate = writer.count / max(time.perf_counter() - start, 1e-9)
            print(f"\rencoded {writer.count} images ({rate:.1f}/s)", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    if writer.count == 0:
        raise DataError("no images to encode")
    writer.flush()
    mean_c, std_c = writer.channel_stats()
    meta = {"count": writer.count, "shape": list(shape or ()), "shards": writer.shards, "dtype": str(np.dtype(dtype)),
            "std": keep_std, "labels": bool(labelled), "channel_mean": mean_c, "channel_std": std_c,
            "scaling_factor": vae.scaling_factor, "class_names": list(class_names) if class_names else None,
            **(info or {})}
    (dest / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Encode images into latent shards for the `latents` data set, and decode generated latents."""


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--vae", "vae_dir", default="", help="Local AutoencoderKL folder (diffusers format).")
@click.option("--resolution", type=click.IntRange(min=8), default=None, help="Resize every image to R x R first.")
@click.option("--center-crop", is_flag=True, help="Crop each image to its centred square first.")
@click.option("--max-images", type=click.IntRange(min=0), default=0, help="Encode a random subset (0 = all).")
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True, help="Images per VAE call.")
@click.option("--shard-size", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Items per shard.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Stored precision of the latents.")
@click.option("--no-std", is_flag=True, help="Store only the posterior means (half the size; no posterior sampling).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Autocast of the VAE (GPU).")
@friendly_errors
def encode(src: Path, dest: Path, vae_dir: str, resolution: int | None, center_crop: bool, max_images: int,
           batch: int, shard_size: int, dtype: str, no_std: bool, device: str, precision: Precision) -> None:
    """Encode the images of SRC (folder, EDM-style zip or .npz) into latent shards in DEST (a new folder).

    Class subfolders or a dataset.json become labels. The resolution must be a multiple of the VAE's
    downsampling (8 for Stable Diffusion's VAE: 512 -> 64x64 latents).
    """
    vae = VAE.load(vae_dir, device=device, precision=precision, batch=batch, what="encode")
    chunks = iter_image_source(src, chunk=max(batch * 8, 256), resolution=resolution or 0, center_crop=center_crop,
                               max_images=max_images)
    meta = encode_dataset(vae, chunks, dest, shard_size=shard_size, dtype=dtype, keep_std=not no_std,
                          info={"source": str(src), "resolution": resolution, "center_crop": center_crop,
                                "vae": str(vae_dir)})
    click.echo(f"wrote {meta['count']} latents of {'x'.join(map(str, meta['shape']))} in {len(meta['shards'])} "
               f"shard(s) to {dest}")
    click.echo(f"per-channel mean {meta['channel_mean']}, std {meta['channel_std']} (raw VAE units; "
               "dataset.channel_mean / channel_std)")


@main.command()
@click.argument("samples", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--vae", "vae_dir", default="", help="Local AutoencoderKL folder (diffusers format).")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The run directory the samples came from (its data set's scaling is undone).")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a PNG grid of the first 100 images.")
@click.option("--batch", type=click.IntRange(min=1), default=16, show_default=True, help="Latents per VAE call.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@friendly_errors
def decode(samples: Path, out: Path, vae_dir: str, run_dir: Path, grid: Path | None, batch: int, device: str) -> None:
    """Decode the float `samples` of SAMPLES.npz (written by dr-sample for a latent run) into uint8 `images`."""
    from diffratio.visualize import image_grid, save_png

    ds = latents_of_run(run_dir)
    if not samples.exists():
        raise DataError(f"{samples} does not exist (write it with dr-sample RUN_DIR --out {samples})")
    with np.load(samples, allow_pickle=False) as data:
        if "samples" not in data.files:
            raise DataError(f"{samples}: no float 'samples' array (arrays: {', '.join(data.files)}); dr-sample writes "
                            "'samples' for a latent run without dataset.vae")
        x = torch.from_numpy(np.asarray(data["samples"], dtype=np.float32))
    if tuple(x.shape[1:]) != ds.data_shape:
        raise DataError(f"{samples}: samples of shape {tuple(x.shape[1:])}, but the run's latents are {ds.data_shape}")
    vae = VAE.load(vae_dir, device=device, batch=batch, what="decode")
    images = vae.decode(ds.to_raw(x))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, images=images.numpy())
    if grid is not None:
        save_png(image_grid(images[:100], ncol=10), grid)
    click.echo(f"wrote {len(images)} images of {images.shape[3]}x{images.shape[2]} to {out}"
               + (f" and {grid}" if grid else ""))


def latents_of_run(run_dir: Path) -> Any:
    """The ``latents`` data set of a run directory, built from its run.json (for the run's scaling)."""
    from diffratio.recipe import structure_config
    from diffratio_builtins.datasets.latents import Latents

    info_path = run_dir / "run.json"
    if not info_path.exists():
        raise DiffRatioError(f"{run_dir} is not a run directory (no run.json)")
    table = dict(json.loads(info_path.read_text())["config"]["dataset"])
    name = table.pop("name", None)
    if name != "latents":
        raise DiffRatioError(f"{run_dir} trained on the data set {name!r}, not on 'latents'; nothing to decode")
    config, errors = structure_config({**table, "vae": None}, Latents.Config, "run.json dataset")
    if errors:
        raise DiffRatioError("\n".join(errors))
    return Latents(config)


if __name__ == "__main__":
    main()
