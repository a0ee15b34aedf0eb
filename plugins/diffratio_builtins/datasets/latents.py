"""Precomputed VAE latents (ImageNet 512x512 as 4x64x64) and random latents for benchmarks.

Latent training never runs the VAE in the training loop: images are encoded once into shards
(``python -m diffratio_builtins.vae encode``, docs/scale.md; the format is in ``shards.py``) and the
models train on the latents. Shapes, labels and dtypes are checked when the data set is built (from the
arrays' headers and the labels); the latents themselves are read at the first batch, so building a run
to sample from it or to benchmark it does not read the whole set. Non-finite latents are refused when
they are read, naming the shard file and the item.

With ``std`` in the shards and ``sample_posterior``, each batch draws ``latents + std * noise`` (as EDM2
does) instead of the posterior mean. Model-space latents have standard deviation about ``sigma_data``:
``channel-stats`` maps each channel to zero mean and unit std with per-channel raw statistics (from the
recipe, or measured on a fixed subset of the data), ``factor`` multiplies by a global raw-to-unit factor
(Stable Diffusion's VAE: 0.18215), ``none`` takes the shards as model units already; the first two then
multiply by ``sigma_data``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
import torch
from torch import Tensor

from diffratio import DataError, Dataset
from diffratio.config import setting
from diffratio.dataset_tool import check_labels
from diffratio_builtins.datasets.shards import ShardSource, scan_shard
from diffratio_builtins.datasets.validate import check_shape

#: how a user gets latent shards; every "no data" error ends with it
PREPARE = ("prepare them from images with `python -m diffratio_builtins.vae encode IMAGES OUT_DIR --vae VAE_DIR "
           "--resolution 512 --center-crop` (VAE_DIR: a local diffusers AutoencoderKL folder such as "
           "stabilityai/sd-vae-ft-mse; docs/scale.md), then set dataset.path = OUT_DIR (or --set dataset.path=OUT_DIR)")
REFERENCE_SEED = 12345
STATS_SEED = 54321
STATS_ITEMS = 10_000  # latents the per-channel statistics are measured on when the recipe gives none


def _describe(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _check_finite(values: np.ndarray, items: np.ndarray, where: str) -> None:
    """Stored latents (float16/float32, exact in float32) of the shard items ``items`` are finite."""
    finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if not finite.all():
        item = int(items[int(np.argmax(~finite))])
        raise DataError(f"{where}: item {item} is not finite (nan or inf); re-encode that shard")


class Latents(Dataset):
    """VAE latents from .npy shards, scaled to model units (see the module docstring)."""

    @attrs.frozen(kw_only=True)
    class Config:
        path: str | None = setting(None, "folder of latent shards (STEM.latents.npy, optional STEM.std.npy and "
                                         "STEM.labels.npy), one STEM.latents.npy or a .zip of shards, relative to "
                                         "the working directory; float16/float32 latents, trained on as float32")
        use_labels: bool = setting(False, "class-conditional training; num_labels is 0 when false")
        num_classes: int | None = setting(None, "number of classes; unset = the largest label + 1", ge=1)
        scaling: Literal["channel-stats", "factor", "none"] = setting(
            "channel-stats", "raw VAE units -> model units: per-channel statistics, one factor, or none")
        channel_mean: tuple[float, ...] | None = setting(
            None, "raw per-channel means for channel-stats; unset = measured on a fixed subset of 10,000 latents")
        channel_std: tuple[float, ...] | None = setting(
            None, "raw per-channel standard deviations for channel-stats; unset = measured likewise")
        scale_factor: float = setting(0.18215, "factor: raw latents times this have unit std", gt=0)
        sigma_data: float = setting(0.5, "std of the model-space latents; unit-std latents are multiplied by it",
                                    gt=0)
        sample_posterior: bool = setting(True, "with std in the shards: draw mean + std * noise per batch")
        storage: Literal["memory", "mmap", "device"] = setting(
            "memory", "memory: each process reads the shards into its RAM; mmap: shard files are memory-mapped "
            "(one page-cache copy for all ranks of a host, nothing read up front); device: all in GPU memory")
        max_items: int | None = setting(None, "train on a fixed random subset of this many latents; unset = all",
                                        ge=2)
        vae: str | None = setting(None, "local AutoencoderKL folder to decode samples into images (grids, FID, "
                                        "dr-sample); unset = none")

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        c: Latents.Config = self.config
        if not c.path:
            raise DataError("dataset latents: dataset.path is not set: give the latent shards of your data. To "
                            + PREPARE)
        path = Path(c.path).expanduser()
        if not path.exists():
            raise DataError(f"dataset latents: {path} (dataset.path) does not exist. To " + PREPARE)
        self._src = ShardSource(path, "to " + PREPARE)
        if not self._src.stems:
            raise DataError(f"dataset latents: {path} holds no latent shards (*.latents.npy). To " + PREPARE)
        if c.storage == "mmap" and self._src.zip is not None:
            raise DataError(f"dataset latents: storage = \"mmap\" maps shard files, not members of {path}; unzip it "
                            "into a folder or use storage = \"memory\"")
        self.shards = [scan_shard(self._src, stem) for stem in self._src.stems]
        first = self.shards[0]
        for s in self.shards[1:]:
            if s.shape[1:] != first.shape[1:]:
                raise DataError(f"dataset latents: {s.where} holds latents of {_describe(s.shape[1:])} but "
                                f"{first.where} holds {_describe(first.shape[1:])}; all shards must come from "
                                "one VAE at one resolution")
        self._shape: tuple[int, ...] = first.shape[1:]
        chans = self._shape[0]
        for key in ("channel_mean", "channel_std"):
            value = getattr(c, key)
            if value is not None and len(value) != chans:
                raise DataError(f"dataset latents: dataset.{key} has {len(value)} values but the latents have "
                                f"{chans} channels")
        if c.channel_std is not None and min(c.channel_std) <= 0:
            raise DataError(f"dataset latents: dataset.channel_std must be positive, got {list(c.channel_std)}")
        self._starts = np.cumsum([0] + [s.size for s in self.shards])
        total = int(self._starts[-1])
        check_shape((total, *self._shape), f"dataset latents ({path})", expected="(N, C, H, W)", ndim=4)
        self._keep: np.ndarray | None = None  # global indices of the items used (max_items), sorted
        if c.max_items is not None and c.max_items < total:
            self._keep = np.sort(np.random.default_rng(0).choice(total, c.max_items, replace=False))
        self._len = len(self._keep) if self._keep is not None else total
        self._has_std = all(s.has_std for s in self.shards)
        self._use_std = c.sample_posterior and self._has_std
        self._labels_np: np.ndarray | None = None
        self._num_classes = 0
        if c.use_labels:
            missing = [s.where for s in self.shards if s.labels is None]
            if missing:
                raise DataError(f"dataset latents: use_labels = true but {missing[0]} has no labels file"
                                + (f" ({len(missing)} shards in all)" if len(missing) > 1 else ""))
            labels = np.concatenate([s.labels for s in self.shards if s.labels is not None])
            check_labels(labels, total, f"dataset latents ({path})", c.num_classes or 0)
            self._num_classes = c.num_classes or int(labels.max()) + 1  # from every shard, not the subset
            self._labels_np = labels[self._keep] if self._keep is not None else labels
        self._device = torch.device("cpu")
        self._data: Tensor | None = None  # memory / device storage: (N, C, H, W) as stored
        self._std: Tensor | None = None
        self._labels: Tensor | None = None
        self._maps: list[tuple[np.ndarray, np.ndarray | None]] | None = None  # mmap storage, per shard
        self._shift: Tensor | None = None  # model = (raw - shift) * scale, per channel
        self._scale: Tensor | None = None
        self._vae: Any = None

    # ---- what the engine reads ----

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def num_labels(self) -> int:
        return self._num_classes

    @property
    def sigma_data(self) -> float:
        return float(self.config.sigma_data)

    def __len__(self) -> int:
        return self._len

    def to(self, device: torch.device) -> Latents:
        self._device = torch.device(device)
        self._labels = None  # re-made on the new device at the next batch
        if self.config.storage == "device" and self._data is not None:
            self._move_to_device()
        if self._shift is not None:
            self._shift, self._scale = self._shift.to(self._device), self._scale.to(self._device)
        return self

    def get(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        """Latents in model units (float32, on the training device) and labels for the indices."""
        mean, std, labels = self._gather(index)
        x = mean.float()
        if std is not None:
            x = x + std.float() * torch.randn_like(x)
        return self.from_raw(x), labels

    def reference(self, n: int) -> Tensor:
        """``n`` posterior means of a fixed random subset, in model units, on CPU."""
        idx = torch.randperm(self._len, generator=torch.Generator().manual_seed(REFERENCE_SEED))[:n]
        mean, _, _ = self._gather(idx, with_std=False)
        return self.from_raw(mean.float()).cpu()

    def to_image(self, x: Tensor) -> Tensor | None:
        """Decode model-space latents to uint8 images through ``dataset.vae``; None when no VAE is given."""
        if not self.config.vae:
            return None
        if self._vae is None:
            from diffratio_builtins.vae import VAE

            self._vae = VAE.load(self.config.vae, device=self._device, what="dataset.vae (decoding samples)")
        return self._vae.decode(self.to_raw(x))

    # ---- scaling ----

    def from_raw(self, raw: Tensor) -> Tensor:
        """Raw VAE latents -> model units (see the module docstring)."""
        shift, scale = self._affine(raw.device)
        return (raw - shift) * scale

    def to_raw(self, x: Tensor) -> Tensor:
        """Model units -> raw VAE latents (what the VAE decodes)."""
        shift, scale = self._affine(x.device)
        return x.float() / scale + shift

    def _affine(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._shift is None or self._scale is None:
            c, chans = self.config, self._shape[0]
            if c.scaling == "none":
                shift, scale = torch.zeros(chans), torch.ones(chans)
            elif c.scaling == "factor":
                shift, scale = torch.zeros(chans), torch.full((chans,), c.scale_factor * c.sigma_data)
            else:
                mean, std = c.channel_mean, c.channel_std
                if mean is None or std is None:
                    measured = self.channel_stats()
                    mean, std = mean or measured[0], std or measured[1]
                shift = torch.tensor(mean, dtype=torch.float32)
                scale = c.sigma_data / torch.tensor(std, dtype=torch.float32)
            self._shift = shift.float().reshape(-1, 1, 1).to(self._device)
            self._scale = scale.float().reshape(-1, 1, 1).to(self._device)
        return self._shift.to(device), self._scale.to(device)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the raw posterior means over a fixed subset of up to 10,000 items."""
        n = min(self._len, STATS_ITEMS)
        idx = torch.from_numpy(np.sort(np.random.default_rng(STATS_SEED).choice(self._len, n, replace=False)))
        total = torch.zeros(self._shape[0], dtype=torch.float64)
        squares = torch.zeros_like(total)
        count = 0
        for part in idx.split(1024):
            x = self._gather(part, with_std=False)[0].double().cpu().transpose(0, 1).flatten(1)  # (C, B*H*W)
            total += x.sum(1)
            squares += (x * x).sum(1)
            count += x.shape[1]
        mean = total / count
        std = (squares / count - mean * mean).clamp_min(0).sqrt()
        if not torch.isfinite(std).all() or (std <= 0).any():
            raise DataError(f"dataset latents: {self.config.path}: per-channel std {std.tolist()} of the latents is "
                            "not positive and finite; check the shards or give dataset.channel_mean/channel_std")
        return tuple(mean.tolist()), tuple(std.tolist())

    # ---- storage ----

    def _gather(self, index: Tensor, with_std: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Stored latents (and std, labels) of the indices, on the training device."""
        storage = self.config.storage
        if storage == "mmap":
            if self._maps is None:
                self._maps = self._map_shards()
            idx = index.cpu().numpy()
            glob = self._keep[idx] if self._keep is not None else idx
            mean, std = self._gather_maps(glob, with_std and self._use_std)
        else:
            if self._data is None:
                self._load()
            idx = index.to(self._data.device)
            mean = self._data.index_select(0, idx)
            std = self._std.index_select(0, idx) if with_std and self._std is not None else None
        labels = None
        if self._labels_np is not None:
            if self._labels is None:
                self._labels = torch.from_numpy(self._labels_np).to(self._device)
            labels = self._labels.index_select(0, index.to(self._device))
        return mean.to(self._device), (std.to(self._device) if std is not None else None), labels

    def _load(self) -> None:
        """Read every used item into one (N, C, H, W) tensor of the shards' common dtype (std likewise)."""
        dtype = np.result_type(*[s.dtype for s in self.shards])
        mean = np.empty((self._len, *self._shape), dtype)
        std = np.empty_like(mean) if self._use_std else None
        pos = 0
        for k, s in enumerate(self.shards):
            keep = self._local_keep(k)
            if keep is not None and not len(keep):
                continue
            items = keep if keep is not None else np.arange(s.size)
            for key, out in (("latents", mean), ("std", std)):
                if out is None:
                    continue
                a = self._src.read(s.stem, key)
                a = a if keep is None else a[keep]
                _check_finite(a, items, self._src.where(s.stem, key))
                out[pos:pos + len(items)] = a
            pos += len(items)
        self._data = torch.from_numpy(mean)
        self._std = torch.from_numpy(std) if std is not None else None
        if self.config.storage == "device":
            self._move_to_device()

    def _move_to_device(self) -> None:
        assert self._data is not None
        self._data = self._data.to(self._device)
        self._std = self._std.to(self._device) if self._std is not None else None

    def _local_keep(self, k: int) -> np.ndarray | None:
        """Indices inside shard ``k`` of the used items (None = all of them)."""
        if self._keep is None:
            return None
        lo, hi = self._starts[k], self._starts[k + 1]
        sel = self._keep[(self._keep >= lo) & (self._keep < hi)]
        return sel - lo

    def _map_shards(self) -> list[tuple[np.ndarray, np.ndarray | None]]:
        return [(self._src.map(s.stem, "latents"), self._src.map(s.stem, "std") if self._use_std else None)
                for s in self.shards]

    def _gather_maps(self, glob: np.ndarray, with_std: bool) -> tuple[Tensor, Tensor | None]:
        """Rows of the memory-mapped shards, read shard by shard in index order (one pass over the pages)."""
        assert self._maps is not None
        shard = np.searchsorted(self._starts, glob, side="right") - 1
        dtype = np.result_type(*[s.dtype for s in self.shards])
        mean = np.empty((len(glob), *self._shape), dtype)
        std = np.empty_like(mean) if with_std else None
        for k in np.unique(shard):
            rows = np.nonzero(shard == k)[0]
            local = glob[rows] - self._starts[k]
            order = np.argsort(local, kind="stable")
            items = local[order]
            m, sd = self._maps[k]
            for key, src, out in (("latents", m, mean), ("std", sd, std)):
                if out is None or src is None:
                    continue
                values = src[items]
                _check_finite(values, items, self._src.where(self.shards[k].stem, key))
                out[rows[order]] = values
        return torch.from_numpy(mean), (torch.from_numpy(std) if std is not None else None)

    def describe(self) -> Iterator[str]:
        """Human-readable lines about the shards (for tools and messages)."""
        yield f"{self._len} latents of {_describe(self._shape)} in {len(self.shards)} shard(s) under {self.config.path}"
        yield f"posterior std: {'yes' if self._has_std else 'no'}; labels: {self._num_classes or 'none'}"


class SyntheticLatents(Dataset):
    """Random latents (Gaussian, std ``sigma_data``) and uniform labels: a stand-in with no files, for
    benchmarks of speed and memory. A pool of ``num_items`` latents, the same for the same seed, lives on
    the training device, so a batch costs one gather and no host-to-device copy."""

    @attrs.frozen(kw_only=True)
    class Config:
        shape: tuple[int, ...] = setting((4, 64, 64), "shape of one latent (C, H, W); (4, 64, 64) = 512x512 "
                                                      "through Stable Diffusion's VAE")
        num_labels: int = setting(1000, "classes; 0 = unconditional", ge=0)
        num_items: int = setting(1024, "size of the random pool", ge=2)
        seed: int = setting(0, "seed of the pool and its labels")
        sigma_data: float = setting(0.5, "standard deviation of the latents", gt=0)

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        c = self.config
        if not c.shape or any(d <= 0 for d in c.shape):
            raise DataError(f"dataset synthetic-latents: shape must be positive sizes, e.g. [4, 64, 64]; got "
                            f"{list(c.shape)}")
        g = torch.Generator().manual_seed(c.seed)
        self.latents = torch.randn(c.num_items, *c.shape, generator=g).mul_(c.sigma_data)
        self.labels = torch.randint(c.num_labels, (c.num_items,), generator=g) if c.num_labels else None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.config.shape)

    @property
    def num_labels(self) -> int:
        return self.config.num_labels

    @property
    def sigma_data(self) -> float:
        return float(self.config.sigma_data)

    def __len__(self) -> int:
        return self.config.num_items

    def to(self, device: torch.device) -> SyntheticLatents:
        self.latents = self.latents.to(device)
        self.labels = self.labels.to(device) if self.labels is not None else None
        return self

    def get(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        index = index.to(self.latents.device)
        return (self.latents.index_select(0, index),
                self.labels.index_select(0, index) if self.labels is not None else None)

    def reference(self, n: int) -> Tensor:
        return self.latents[:n].cpu()
