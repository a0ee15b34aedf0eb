"""Reading users' image data (folders, EDM-style zips, npz, IDX folders) and the ``dr-dataset`` command.

Everything here returns plain uint8 NumPy arrays and raises ``DataError`` with the offending file or
index named, so that bad data stops a run before training rather than in the middle of it. The image
data sets of ``diffratio_builtins`` read through these functions; ``dr-dataset convert`` turns a folder
or zip into the ``.npz`` format those data sets load fastest (one array, no per-image decoding).

The npz format and IDX folders are read by ``diffratio.image_arrays`` (its names are re-exported here).
The zip format is NVlabs' (EDM, StyleGAN): images anywhere in
the archive and an optional ``dataset.json`` ``{"labels": [["00000/img00000000.png", 6], ...]}``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import numpy as np

from diffratio.cli import friendly_errors
from diffratio.errors import DataError
from diffratio.idx import idx_prefixes
from diffratio.image_arrays import (
    ImageArrays,
    check_labels,
    read_idx_folder,
    read_npz_images,
    summary,
    to_nhwc,
    write_npz,
)
from diffratio.longjob import describe_file, interruptible, progress

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_GRAY_MODES = {"1": "L", "L": "L", "LA": "L"}
_RGB_MODES = {"RGB": "RGB", "RGBA": "RGB", "P": "RGB", "CMYK": "RGB", "YCbCr": "RGB"}


# --------------------------------------------------------------------------------------------------
# Folders and zips
# --------------------------------------------------------------------------------------------------


class _Source:
    """The files of a folder or a zip archive, by relative POSIX name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self.files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        else:
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{path}: not a folder and not a readable zip archive ({exc})") from exc
            self.files = sorted(n for n in self._zip.namelist() if not n.endswith("/"))
        self.files = [f for f in self.files if not any(part.startswith(".") or part == "__MACOSX"
                                                      for part in f.split("/"))]

    def read(self, name: str) -> bytes:
        try:
            if self._zip is not None:
                return self._zip.read(name)
            return (self.path / name).read_bytes()
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"{self.where(name)}: cannot read the file ({exc})") from exc

    def where(self, name: str) -> str:
        return f"{self.path}:{name}" if self._zip is not None else str(self.path / name)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _labels_for(src: _Source, names: Sequence[str]) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """Labels from ``dataset.json`` if there is one, else from one level of class subfolders, else none."""
    if "dataset.json" in src.files:
        try:
            meta = json.loads(src.read("dataset.json"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{src.where('dataset.json')}: not valid JSON ({exc})") from exc
        raw = meta.get("labels") if isinstance(meta, dict) else None
        if raw is None:
            return None, None
        try:
            table = dict(raw)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{src.where('dataset.json')}: 'labels' must be a list of [file, label] pairs "
                            f"({exc})") from exc
        labels = np.empty(len(names), np.int64)
        for i, name in enumerate(names):
            if name not in table:
                raise DataError(f"{src.where('dataset.json')}: no label for image {name}")
            value = table[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise DataError(f"{src.where('dataset.json')}: label of {name} is {value!r}; expected a class "
                                f"index (an integer; vector/one-hot labels are not supported)")
            labels[i] = value
        return labels, None
    dirs = [n.split("/")[0] if n.count("/") == 1 else None for n in names]
    if names and all(d is not None for d in dirs):
        classes = tuple(sorted(set(dirs)))  # type: ignore[arg-type]
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index[d] for d in dirs], np.int64), classes
    return None, None


def _transform(img: Any, resolution: int, center_crop: bool) -> Any:
    """EDM dataset_tool's transforms: centre crop to a square and/or Lanczos resize to R x R."""
    from PIL import Image

    if center_crop:
        w, h = img.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if resolution and img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.LANCZOS)
    return img


def decode_image(data: bytes, where: str, resolution: int = 0, center_crop: bool = False) -> np.ndarray:
    """Decode one image file to uint8 (H, W, C), C = 1 for grey, 3 for colour (alpha dropped)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = _GRAY_MODES.get(img.mode) or _RGB_MODES.get(img.mode)
            if mode is None:
                raise DataError(f"{where}: unsupported image mode {img.mode!r} (8-bit grey or RGB expected)")
            img = _transform(img.convert(mode), resolution, center_crop)
            arr = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{where}: cannot read the image ({type(exc).__name__}: {exc})") from exc
    return arr[:, :, None] if arr.ndim == 2 else arr


def _describe(shape: tuple[int, ...]) -> str:
    h, w, c = shape
    return f"{w}x{h} with {c} channel{'s' if c != 1 else ''}"


def _select_images(src: _Source, path: Path, max_images: int, seed: int,
                   hint: str = "") -> tuple[list[str], np.ndarray | None, tuple[str, ...] | None]:
    """The image files of a folder or zip, their labels (checked) and class names; ``max_images`` > 0
    keeps a seeded random subset in the original order. Errors name ``path`` (and ``hint`` when none)."""
    names = [f for f in src.files if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not names:
        raise DataError(f"{path}: no images found ({', '.join(IMAGE_EXTENSIONS)}){hint}")
    labels, class_names = _labels_for(src, names)
    if 0 < max_images < len(names):
        keep = np.sort(np.random.default_rng(seed).choice(len(names), max_images, replace=False))
        names = [names[i] for i in keep]
        labels = labels[keep] if labels is not None else None
    if labels is not None:
        check_labels(labels, len(names), str(path), names=names)
    return names, labels, class_names


def read_image_source(path: str | Path, *, resolution: int = 0, center_crop: bool = False, max_images: int = 0,
                      seed: int = 0, workers: int | None = None, show_progress: bool = False) -> ImageArrays:
    """Load every image of a folder or EDM-style zip into one uint8 (N, H, W, C) array.

    All images must have one size and channel count unless ``resolution`` resizes them; labels come
    from ``dataset.json`` or class subfolders (see module docstring). ``max_images`` > 0 keeps a
    random subset (fixed by ``seed``) and decodes only that. ``show_progress``: a progress display on
    stderr while decoding.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist (expected a folder of images or a .zip archive)")
    src = _Source(path)
    try:
        hint = " (an .npz file: use the npz-images data set)" if path.suffix.lower() == ".npz" else ""
        names, labels, class_names = _select_images(src, path, max_images, seed, hint)
        decode = functools.partial(decode_image, resolution=resolution, center_crop=center_crop)
        desc = f"decoding {path.name}" if show_progress else None
        images = _decode_all(src, names, decode, workers, desc)
    finally:
        src.close()
    return ImageArrays(images, labels, class_names, tuple(names))


def iter_image_source(path: str | Path, *, chunk: int = 1024, resolution: int = 0, center_crop: bool = False,
                      max_images: int = 0, seed: int = 0, workers: int | None = None) -> Iterator[ImageArrays]:
    """``read_image_source`` in chunks of at most ``chunk`` images, in the same order and with the same labels
    and errors, so that a data set too large for memory (ImageNet) can be streamed, e.g. into a VAE encoder.

    An ``.npz`` file is read whole and then sliced. ``names`` of each chunk are its images' files.
    """
    path = Path(path)
    if path.suffix.lower() == ".npz":
        arrays = read_npz_images(path)
        images, labels = arrays.images, arrays.labels
        if 0 < max_images < images.shape[0]:
            keep = np.sort(np.random.default_rng(seed).choice(images.shape[0], max_images, replace=False))
            images, labels = images[keep], (labels[keep] if labels is not None else None)
        for start in range(0, images.shape[0], chunk):
            yield ImageArrays(images[start:start + chunk], labels[start:start + chunk] if labels is not None else None,
                              arrays.class_names)
        return
    if not path.exists():
        raise DataError(f"{path} does not exist (expected a folder of images, a .zip archive or an .npz file)")
    src = _Source(path)
    try:
        names, labels, class_names = _select_images(src, path, max_images, seed)
        decode = functools.partial(decode_image, resolution=resolution, center_crop=center_crop)
        first: tuple[int, ...] | None = None
        for start in range(0, len(names), chunk):
            part = names[start:start + chunk]
            images = _decode_all(src, part, decode, workers)
            if first is None:
                first = images.shape[1:]
            elif images.shape[1:] != first:
                raise DataError(f"{src.where(part[0])}: image is {_describe(images.shape[1:])}, but {names[0]} is "
                                f"{_describe(first)}; all images must have one size and channel count (give a "
                                f"resolution to resize them)")
            yield ImageArrays(images, labels[start:start + chunk] if labels is not None else None, class_names,
                              tuple(part))
    finally:
        src.close()


def _decode_all(src: _Source, names: Sequence[str], decode: Callable[..., np.ndarray],
                workers: int | None, desc: str | None = None) -> np.ndarray:
    """Decode in threads (Pillow releases the GIL), filling one preallocated array in file order; ``desc``
    names the job in a progress display (None: silent)."""
    workers = workers or min(8, os.cpu_count() or 1)
    out: np.ndarray | None = None
    first = names[0]
    chunk = 512
    with ThreadPoolExecutor(workers) as pool, progress(len(names), desc or "", enabled=desc is not None) as bar:
        for start in range(0, len(names), chunk):
            part = names[start:start + chunk]
            blobs = [src.read(n) for n in part]
            arrays = pool.map(lambda nb: decode(nb[1], src.where(nb[0])), zip(part, blobs, strict=True))
            for i, (name, arr) in enumerate(zip(part, arrays, strict=True)):
                if out is None:
                    out = np.empty((len(names), *arr.shape), np.uint8)
                elif arr.shape != out.shape[1:]:
                    raise DataError(
                        f"{src.where(name)}: image is {_describe(arr.shape)}, but {first} is "
                        f"{_describe(out.shape[1:])}; all images must have one size and channel count "
                        f"(`dr-dataset convert SRC DEST.npz --resolution R` resizes them)")
                out[start + i] = arr
            if bar is not None:
                bar.update(len(part))
    assert out is not None
    return out


def read_images(path: str | Path, **kwargs: Any) -> ImageArrays:
    """An .npz file, a folder or a zip, by what ``path`` is."""
    p = Path(path)
    if p.suffix.lower() == ".npz":
        return read_npz_images(p)
    return read_image_source(p, **kwargs)


# --------------------------------------------------------------------------------------------------
# dr-dataset
# --------------------------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def dataset() -> None:
    """Convert and inspect image data sets for diffratio (npz, image folders, EDM-style zips, IDX folders)."""


@dataset.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--resolution", type=click.IntRange(min=1), default=None,
              help="Resize every image to R x R (Lanczos).")
@click.option("--center-crop", is_flag=True, help="Crop each image to its centred square first.")
@click.option("--max-images", type=click.IntRange(min=0), default=0, help="Keep a random subset (0 = all).")
@click.option("--compress", is_flag=True, help="Write a compressed .npz (smaller, slower to load).")
@interruptible
@friendly_errors
def convert(src: Path, dest: Path, resolution: int | None, center_crop: bool, max_images: int,
            compress: bool) -> None:
    """Turn an image folder or EDM-style zip SRC into DEST.npz for the npz-images data set.

    Class subfolders (SRC/cat/*.png) or a dataset.json become labels.
    """
    if dest.suffix.lower() != ".npz":
        raise DataError(f"{dest}: the output file must end in .npz")
    if not src.exists():
        raise DataError(f"{src} does not exist (expected a folder of images or a .zip archive)")
    arrays = read_image_source(src, resolution=resolution or 0, center_crop=center_crop, max_images=max_images,
                               show_progress=True)
    write_npz(dest, arrays, compress=compress)
    click.echo(f"wrote {describe_file(dest)}")
    for line in summary(arrays):
        click.echo(line)


@dataset.command()
@click.argument("path", type=click.Path(path_type=Path))
@interruptible
@friendly_errors
def info(path: Path) -> None:
    """Read PATH (an .npz, a folder of images or of IDX files, a zip) fully and describe it; fails on the first
    bad file."""
    if idx_prefixes(path):
        for split, arrays in read_idx_folder(path).items():
            click.echo(f"{path} [{split}]")
            for line in summary(arrays):
                click.echo(line)
        return
    arrays = read_images(path, show_progress=True)
    click.echo(str(path))
    for line in summary(arrays):
        click.echo(line)


__all__ = [
    "IMAGE_EXTENSIONS", "ImageArrays", "check_labels", "dataset", "decode_image", "iter_image_source", "read_images",
    "read_image_source", "read_npz_images", "summary", "to_nhwc", "write_npz",
]
