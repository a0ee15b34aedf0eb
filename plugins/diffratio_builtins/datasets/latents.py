"""Precomputed VAE latents (ImageNet 512x512 as 4x64x64) and random latents for benchmarks.

Latent training (EDM2, design.md "Scale") never runs the VAE in the training loop: images are encoded
once into shards (``python -m diffratio_builtins.vae encode``, docs/scale.md) and the models train on
the latents. A shard is an uncompressed ``.npz`` with

- ``latents``: float16 or float32 (N, C, H, W), the VAE posterior means in raw VAE units;
- ``std`` (optional): the posterior standard deviations, same shape; with ``sample_posterior`` each batch
  draws ``latents + std * noise`` (as EDM2 does) instead of the mean;
- ``labels`` (optional): integer (N,) class indices.

``dataset.path`` is one shard, a folder of shards (found recursively, in sorted order) or a .zip of shards.
Shapes, labels and dtypes are checked when the data set is built (from the arrays' headers and the
labels); the latents themselves are read at the first batch, so building a run to sample from it or to
benchmark it does not read the whole set.

Model-space latents have standard deviation about ``sigma_data`` (EDM's sigma_data, 0.5 by default, as in
EDM2): ``channel-stats`` maps each channel to zero mean and unit std with per-channel raw statistics (from
the recipe, or measured on a fixed subset of the data), ``factor`` multiplies by a global raw-to-unit
factor (Stable Diffusion's VAE: 0.18215), ``none`` takes the shards as model units already; the first two
then multiply by ``sigma_data``.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

import attrs
import numpy as np
import torch
from torch import Tensor

from diffratio import DataError, Dataset
from diffratio.dataset_tool import check_labels

#: how a user gets latent shards; every "no data" error ends with it
PREPARE = ("prepare them from images with `python -m diffratio_builtins.vae encode IMAGES OUT_DIR --vae VAE_DIR "
           "--resolution 512 --center-crop` (VAE_DIR: a local diffusers AutoencoderKL folder such as "
           "stabilityai/sd-vae-ft-mse; docs/scale.md), then set dataset.path = OUT_DIR (or --set dataset.path=OUT_DIR)")
REFERENCE_SEED = 12345
STATS_SEED = 54321
STATS_ITEMS = 10_000  # latents the per-channel statistics are measured on when the recipe gives none

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip local file header: 30 bytes, name and extra lengths last


@attrs.frozen
class ArrayHeader:
    """Shape, dtype and place of one array inside an .npz, read without reading the array."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    stored: bool  # not compressed: the array's bytes lie in the file as they are
    offset: int  # byte offset of the array's data in the .npz file (meaningful when stored)


@attrs.frozen
class Shard:
    """One .npz shard: where it is, its arrays' headers and its labels (small, read at once)."""

    name: str  # relative name inside the folder or zip; "" for a single file
    where: str  # path for messages
    latents: ArrayHeader
    std: ArrayHeader | None
    labels: np.ndarray | None

    @property
    def size(self) -> int:
        return self.latents.shape[0]


class ShardSource:
    """The .npz shards of ``dataset.path``: one file, a folder (searched recursively) or a zip archive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self.names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*.npz")
                                if not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.suffix.lower() == ".npz":
            self.names = [""]
        elif path.suffix.lower() == ".zip":
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{path}: not a readable zip archive ({exc})") from exc
            self.names = sorted(n for n in self.zip.namelist() if n.lower().endswith(".npz"))
        else:
            raise DataError(f"{path}: expected an .npz shard, a folder of .npz shards or a .zip of them; "
                            + PREPARE)

    def where(self, name: str) -> str:
        if not name:
            return str(self.path)
        return f"{self.path}:{name}" if self.zip is not None else str(self.path / name)

    def file(self, name: str) -> Path:
        return self.path / name if name else self.path

    def open(self, name: str) -> IO[bytes]:
        if self.zip is not None:
            return self.zip.open(name)
        return open(self.file(name), "rb")

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def read_array_headers(f: IO[bytes], where: str) -> dict[str, ArrayHeader]:
    """The headers of every array of an .npz file object (seekable), by array name."""
    out: dict[str, ArrayHeader] = {}
    try:
        with zipfile.ZipFile(f) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as m:
                    version = np.lib.format.read_magic(m)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, fortran, dtype = read(m)
                    header_len = m.tell()
                f.seek(info.header_offset)
                local = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
                data_start = info.header_offset + _LOCAL_HEADER.size + local[-2] + local[-1] + header_len
                out[info.filename[:-4]] = ArrayHeader(tuple(shape), np.dtype(dtype), bool(fortran),
                                                      info.compress_type == zipfile.ZIP_STORED, data_start)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, struct.error) as exc:
        raise DataError(f"{where}: cannot be read as .npz ({type(exc).__name__}: {exc})") from exc
    return out


def scan_shard(src: ShardSource, name: str) -> Shard:
    """Read one shard's headers and labels; raise ``DataError`` naming the shard for anything malformed."""
    where = src.where(name)
    with src.open(name) as f:
        headers = read_array_headers(f, where)
        if "latents" not in headers:
            raise DataError(f"{where}: no array 'latents' (arrays: {', '.join(sorted(headers)) or 'none'}); a latent "
                            f"shard holds 'latents' (N, C, H, W) and optional 'std' and 'labels'")
        lat = headers["latents"]
        if lat.dtype.kind != "f":
            raise DataError(f"{where}: 'latents' must be float16 or float32, got {lat.dtype}")
        if len(lat.shape) != 4:
            raise DataError(f"{where}: 'latents' must have shape (N, C, H, W), got {lat.shape}")
        if lat.shape[0] == 0:
            raise DataError(f"{where}: empty shard ('latents' has shape {lat.shape}); remove it or re-encode")
        std = headers.get("std")
        if std is not None and (std.shape != lat.shape or std.dtype.kind != "f"):
            raise DataError(f"{where}: 'std' must be a float array of the shape of 'latents' {lat.shape}, got "
                            f"{std.dtype} {std.shape}")
        labels = None
        if "labels" in headers:
            f.seek(0)
            try:
                with np.load(f, allow_pickle=False) as data:
                    labels = np.asarray(data["labels"])
            except Exception as exc:
                raise DataError(f"{where}: cannot read 'labels' ({type(exc).__name__}: {exc})") from exc
            labels = check_labels(labels, lat.shape[0], f"{where}['labels']")
    return Shard(name=name, where=where, latents=lat, std=std, labels=labels)


def _describe(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


class Latents(Dataset):
    """VAE latents from .npz shards, scaled to model units (see the module docstring)."""

    @attrs.frozen(kw_only=True)
    class Config:
        path: str = ""  # .npz shard, folder of shards or .zip of shards (docs/scale.md says how to make them)
        use_labels: bool = False  # class-conditional training; num_labels is 0 when false
        num_classes: int = attrs.field(default=0, validator=attrs.validators.ge(0))  # 0 = from the labels
        scaling: Literal["channel-stats", "factor", "none"] = "channel-stats"  # raw VAE units -> model units
        # raw per-channel means for "channel-stats" (EDM2's for sd-vae-ft-mse at 512 are in docs/scale.md);
        # empty = measured on a fixed subset of 10,000 latents
        channel_mean: tuple[float, ...] = ()
        channel_std: tuple[float, ...] = ()  # raw per-channel stds, likewise; empty = measured
        scale_factor: float = attrs.field(default=0.18215, validator=attrs.validators.gt(0))
        # ^ "factor": raw latents times this have unit std (Stable Diffusion's VAE: 0.18215)
        sigma_data: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
        # ^ std of the model-space latents (EDM's sigma_data; EDM2: 0.5); unit-std latents are multiplied by it
        sample_posterior: bool = True  # with 'std' in the shards: draw mean + std * noise per batch (EDM2)
        # memory: each process reads the shards into its RAM; mmap: uncompressed shards are memory-mapped (one
        # page-cache copy for all ranks of a host, nothing read up front); device: all in GPU memory (fastest)
        storage: Literal["memory", "mmap", "device"] = "memory"
        max_items: int = attrs.field(default=0, validator=attrs.validators.ge(0))  # random subset; 0 = all
        vae: str = ""  # local AutoencoderKL folder to decode samples into images (grids, FID, dr-sample); "" = none

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        c: Latents.Config = self.config
        if not c.path:
            raise DataError("dataset latents: dataset.path is not set: give the latent shards of your data. To "
                            + PREPARE)
        path = Path(c.path).expanduser()
        if not path.exists():
            raise DataError(f"dataset latents: {path} (dataset.path) does not exist. To " + PREPARE)
        self._src = ShardSource(path)
        if not self._src.names:
            raise DataError(f"dataset latents: {path} holds no .npz shards. To " + PREPARE)
        if c.storage == "mmap" and self._src.zip is not None:
            raise DataError(f"dataset latents: storage = \"mmap\" maps shard files, not members of {path}; unzip it "
                            "into a folder or use storage = \"memory\"")
        self.shards = [scan_shard(self._src, name) for name in self._src.names]
        self._check_shards()
        first = self.shards[0].latents.shape
        self._shape: tuple[int, ...] = tuple(int(d) for d in first[1:])
        chans = self._shape[0]
        for key in ("channel_mean", "channel_std"):
            value = getattr(c, key)
            if value and len(value) != chans:
                raise DataError(f"dataset latents: dataset.{key} has {len(value)} values but the latents have "
                                f"{chans} channels")
        if c.channel_std and min(c.channel_std) <= 0:
            raise DataError(f"dataset latents: dataset.channel_std must be positive, got {list(c.channel_std)}")
        self._starts = np.cumsum([0] + [s.size for s in self.shards])
        total = int(self._starts[-1])
        self._keep: np.ndarray | None = None  # global indices of the items used (max_items), sorted
        if 0 < c.max_items < total:
            rng = np.random.default_rng(0)
            self._keep = np.sort(rng.choice(total, c.max_items, replace=False))
        self._len = len(self._keep) if self._keep is not None else total
        self._has_std = all(s.std is not None for s in self.shards)
        self._use_std = c.sample_posterior and self._has_std
        self._labels_np: np.ndarray | None = None
        self._num_classes = 0
        if c.use_labels:
            missing = [s.where for s in self.shards if s.labels is None]
            if missing:
                raise DataError(f"dataset latents: use_labels = true but {missing[0]} has no 'labels'"
                                + (f" ({len(missing)} shards in all)" if len(missing) > 1 else ""))
            labels = np.concatenate([s.labels for s in self.shards if s.labels is not None])
            check_labels(labels, total, f"dataset latents ({path})", c.num_classes)
            self._num_classes = c.num_classes or int(labels.max()) + 1  # from every shard, not the subset
            labels = labels[self._keep] if self._keep is not None else labels
            self._labels_np = labels
        self._device = torch.device("cpu")
        self._data: Tensor | None = None  # memory / device storage: (N, C, H, W) as stored
        self._std: Tensor | None = None
        self._labels: Tensor | None = None
        self._maps: list[tuple[np.ndarray, np.ndarray | None]] | None = None  # mmap storage, per shard
        self._shift: Tensor | None = None  # model = (raw - shift) * scale, per channel
        self._scale: Tensor | None = None
        self._vae: Any = None

    def _check_shards(self) -> None:
        first = self.shards[0]
        for s in self.shards[1:]:
            if s.latents.shape[1:] != first.latents.shape[1:]:
                raise DataError(f"dataset latents: {s.where} holds latents of {_describe(s.latents.shape[1:])} but "
                                f"{first.where} holds {_describe(first.latents.shape[1:])}; all shards must come from "
                                "one VAE at one resolution")
        if self.config.storage == "mmap":
            for s in self.shards:
                for h in (s.latents, s.std):
                    if h is not None and (not h.stored or h.fortran):
                        raise DataError(f"dataset latents: {s.where} is compressed (or Fortran-ordered) and cannot be "
                                        "memory-mapped; write shards with np.savez (as the encoder does) or use "
                                        "storage = \"memory\"")

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
                mean, std = (c.channel_mean, c.channel_std)
                if not mean or not std:
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
        dtype = np.result_type(*[s.latents.dtype for s in self.shards])
        mean = np.empty((self._len, *self._shape), dtype)
        std = np.empty_like(mean) if self._use_std else None
        pos = 0
        for k, s in enumerate(self.shards):
            keep = self._local_keep(k)
            if keep is not None and not len(keep):
                continue
            with self._src.open(s.name) as f:
                try:
                    with np.load(f, allow_pickle=False) as data:
                        arrays = {"latents": data["latents"], **({"std": data["std"]} if std is not None else {})}
                except Exception as exc:
                    raise DataError(f"{s.where}: cannot read the latents ({type(exc).__name__}: {exc})") from exc
            for key, out in (("latents", mean), ("std", std)):
                if out is None:
                    continue
                a = arrays[key] if keep is None else arrays[key][keep]
                rows_ok = np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
                if not rows_ok.all():
                    bad = int(np.argmax(~rows_ok))
                    raise DataError(f"{s.where}: '{key}' of item {bad if keep is None else int(keep[bad])} is not "
                                    "finite (nan or inf); re-encode that shard")
                out[pos:pos + a.shape[0]] = a
            pos += (s.size if keep is None else len(keep))
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
        maps = []
        for s in self.shards:
            file = self._src.file(s.name)
            arrays = [np.memmap(file, dtype=h.dtype, mode="r", offset=h.offset, shape=h.shape) if h is not None
                      else None for h in (s.latents, s.std if self._use_std else None)]
            maps.append((arrays[0], arrays[1]))
        return maps

    def _gather_maps(self, glob: np.ndarray, with_std: bool) -> tuple[Tensor, Tensor | None]:
        """Rows of the memory-mapped shards, read shard by shard in index order (one pass over the pages)."""
        assert self._maps is not None
        shard = np.searchsorted(self._starts, glob, side="right") - 1
        dtype = np.result_type(*[s.latents.dtype for s in self.shards])
        mean = np.empty((len(glob), *self._shape), dtype)
        std = np.empty_like(mean) if with_std else None
        for k in np.unique(shard):
            rows = np.nonzero(shard == k)[0]
            local = glob[rows] - self._starts[k]
            order = np.argsort(local, kind="stable")
            m, sd = self._maps[k]
            mean[rows[order]] = m[local[order]]
            if std is not None and sd is not None:
                std[rows[order]] = sd[local[order]]
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
        shape: tuple[int, ...] = (4, 64, 64)  # shape of one latent (C, H, W); (4, 64, 64) = 512x512 through SD's VAE
        num_labels: int = attrs.field(default=1000, validator=attrs.validators.ge(0))  # classes; 0 = unconditional
        num_items: int = attrs.field(default=1024, validator=attrs.validators.gt(0))  # size of the random pool
        seed: int = 0  # seed of the pool and its labels
        sigma_data: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))  # std of the latents

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
