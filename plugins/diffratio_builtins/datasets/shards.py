"""The on-disk format of latent shards: plain ``.npy`` arrays, which numpy memory-maps directly.

A shard named STEM is up to three files side by side:

- ``STEM.latents.npy``: float16 or float32 (N, C, H, W), the VAE posterior means in raw VAE units;
- ``STEM.std.npy`` (optional): the posterior standard deviations, same shape and dtype kind;
- ``STEM.labels.npy`` (optional): integer (N,) class indices.

A set of shards is a folder (searched recursively, in sorted order of the stems), one ``STEM.latents.npy``
file (with its siblings), or a ``.zip`` of such files. ``write_shard`` writes a shard atomically, its
latents file last, so a shard interrupted while being written is never seen. ``convert`` turns
``.npz`` shards (the same arrays inside one zip file each) into this format.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import attrs
import click
import numpy as np

from diffratio import DataError
from diffratio.cli import friendly_errors
from diffratio.dataset_tool import check_labels

#: the arrays of a shard, the latents (which make the shard exist) first
ARRAYS = ("latents", "std", "labels")
LATENTS = ".latents.npy"
#: latent dtypes a shard may store; both are exact in the float32 the models train in
DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
CONVERT = "python -m diffratio_builtins.datasets.shards SRC DEST"


@attrs.frozen
class Shard:
    """One shard: its stem, the shape and dtype of its latents, and its labels (small, read at once)."""

    stem: str
    where: str  # the latents file, for messages
    shape: tuple[int, ...]
    dtype: np.dtype
    has_std: bool
    labels: np.ndarray | None

    @property
    def size(self) -> int:
        return self.shape[0]


class ShardSource:
    """The shards under ``path``: a folder, one ``STEM.latents.npy`` file, or a ``.zip`` of shard files."""

    def __init__(self, path: Path, prepare: str) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self.root = path
            files = [p.relative_to(path).as_posix() for p in path.rglob("*.npy")
                     if not any(part.startswith(".") for part in p.relative_to(path).parts)]
        elif path.name.endswith(LATENTS):
            stem = path.name[: -len(LATENTS)]
            self.root = path.parent
            files = [f"{stem}.{a}.npy" for a in ARRAYS if (path.parent / f"{stem}.{a}.npy").exists()]
        elif path.suffix.lower() == ".zip":
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{path}: not a readable zip archive ({exc})") from exc
            self.root, files = path, self.zip.namelist()
        elif path.suffix.lower() == ".npz":
            raise DataError(f"{path}: latent shards are .npy files (STEM{LATENTS}, STEM.std.npy, STEM.labels.npy), "
                            f"not .npz; convert them with `{CONVERT}`")
        else:
            raise DataError(f"{path}: expected a folder of latent shards, a STEM{LATENTS} file or a .zip of "
                            "shards; " + prepare)
        self.files = set(files)
        self.stems = sorted(f[: -len(LATENTS)] for f in files if f.endswith(LATENTS))
        if not self.stems and self.zip is None and any(p.suffix == ".npz" for p in path.rglob("*.npz")):
            raise DataError(f"{path} holds .npz shards; latent shards are .npy files (STEM{LATENTS}, ...): convert "
                            f"them with `{CONVERT}`")

    def has(self, stem: str, array: str) -> bool:
        return f"{stem}.{array}.npy" in self.files

    def where(self, stem: str, array: str) -> str:
        name = f"{stem}.{array}.npy"
        return f"{self.path}:{name}" if self.zip is not None else str(self.root / name)

    def open(self, stem: str, array: str) -> IO[bytes]:
        name = f"{stem}.{array}.npy"
        return self.zip.open(name) if self.zip is not None else open(self.root / name, "rb")

    def header(self, stem: str, array: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype of one array, read from its header only."""
        with self._reading(stem, array), self.open(stem, array) as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        return tuple(int(d) for d in shape), np.dtype(dtype)

    def read(self, stem: str, array: str) -> np.ndarray:
        """One array, read whole."""
        with self._reading(stem, array), self.open(stem, array) as f:
            return np.lib.format.read_array(f, allow_pickle=False)

    def map(self, stem: str, array: str) -> np.ndarray:
        """One array, memory-mapped (shard files only, not zip members)."""
        assert self.zip is None
        with self._reading(stem, array):
            return np.load(self.root / f"{stem}.{array}.npy", mmap_mode="r")

    @contextlib.contextmanager
    def _reading(self, stem: str, array: str) -> Iterator[None]:
        """Turn any failure to read an array into a ``DataError`` naming the file."""
        try:
            yield
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{self.where(stem, array)}: not a readable .npy array ({type(exc).__name__}: "
                            f"{exc})") from exc

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def scan_shard(src: ShardSource, stem: str) -> Shard:
    """One shard's shapes, dtypes and labels; a ``DataError`` naming the file for anything malformed."""
    where = src.where(stem, "latents")
    shape, dtype = src.header(stem, "latents")
    if dtype not in DTYPES:
        raise DataError(f"{where}: latents must be float16 or float32, got {dtype}")
    if len(shape) != 4:
        raise DataError(f"{where}: latents must have shape (N, C, H, W), got {shape}")
    if 0 in shape:
        raise DataError(f"{where}: empty shard (latents of shape {shape}); remove it or re-encode")
    has_std = src.has(stem, "std")
    if has_std:
        std_shape, std_dtype = src.header(stem, "std")
        if std_shape != shape or std_dtype not in DTYPES:
            raise DataError(f"{src.where(stem, 'std')}: std must be float16 or float32 of the latents' shape {shape}, "
                            f"got {std_dtype} {std_shape}")
    labels = None
    if src.has(stem, "labels"):
        labels = check_labels(src.read(stem, "labels"), shape[0], src.where(stem, "labels"))
    return Shard(stem=stem, where=where, shape=shape, dtype=dtype, has_std=has_std, labels=labels)


def write_shard(folder: Path, stem: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` (``latents`` and optional ``std``, ``labels``) as shard ``stem`` in ``folder``.

    Each file is written under a temporary name and renamed; the latents file comes last.
    """
    unknown = set(arrays) - set(ARRAYS)
    if unknown or "latents" not in arrays:
        raise ValueError(f"a shard holds 'latents' and optional 'std', 'labels'; got {sorted(arrays)}")
    for name in reversed(ARRAYS):
        if name not in arrays:
            continue
        dest = folder / f"{stem}.{name}.npy"
        tmp = folder / f".{stem}.{name}.npy.partial"
        try:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            os.replace(tmp, dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise DataError(f"{dest}: cannot write ({exc})") from exc


def convert(src: Path, dest: Path) -> list[str]:
    """Write every ``.npz`` shard under ``src`` (a folder or one file) as ``.npy`` shards into ``dest``."""
    files = sorted(src.rglob("*.npz")) if src.is_dir() else [src]
    if not files or not all(f.exists() for f in files):
        raise DataError(f"{src}: no .npz shards found")
    dest.mkdir(parents=True, exist_ok=True)
    stems = []
    for file in files:
        stem = file.relative_to(src).with_suffix("").as_posix() if src.is_dir() else file.stem
        try:
            with np.load(file, allow_pickle=False) as data:
                arrays = {k: data[k] for k in ARRAYS if k in data.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{file}: cannot be read as .npz ({type(exc).__name__}: {exc})") from exc
        if "latents" not in arrays:
            raise DataError(f"{file}: no array 'latents'; not a latent shard")
        (dest / stem).parent.mkdir(parents=True, exist_ok=True)
        write_shard((dest / stem).parent, Path(stem).name, arrays)
        stems.append(stem)
    return stems


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("src", type=click.Path(path_type=Path, exists=True))
@click.argument("dest", type=click.Path(path_type=Path))
@friendly_errors
def main(src: Path, dest: Path) -> None:
    """Convert the .npz latent shards under SRC into .npy shards in DEST (a folder)."""
    stems = convert(src, dest)
    click.echo(f"wrote {len(stems)} shard(s) to {dest}")


if __name__ == "__main__":
    main()
