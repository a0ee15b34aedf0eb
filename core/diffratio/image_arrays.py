"""Image data sets as arrays: ``ImageArrays``, the ``.npz`` format, IDX folders, and their summary.

The npz format: ``images`` uint8 (N, H, W, C) (or (N, C, H, W)), optional ``labels`` int64 (N,) and
optional ``class_names`` (K,) strings. An IDX folder (MNIST, Fashion-MNIST) holds
``{split}-images-idx3-ubyte(.gz)`` and ``{split}-labels-idx1-ubyte(.gz)`` per split.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from diffratio.errors import DataError
from diffratio.idx import idx_prefixes, read_split
from diffratio.longjob import atomic_write


@attrs.frozen
class ImageArrays:
    """Images as uint8 (N, H, W, C) with optional int64 labels and the class names they index."""

    images: np.ndarray
    labels: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    names: tuple[str, ...] = ()  # the files the images came from (folder/zip), in order



def check_labels(labels: Any, n: int, where: str, num_classes: int = 0, names: Sequence[str] = ()) -> np.ndarray:
    """Validate class-index labels: integer, shape (n,), 0 <= label (< num_classes when given)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers (class indices), got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise DataError(f"{where}: labels must have shape ({n},) to match the images, got {labels.shape}")
    bad = (labels < 0) | ((labels >= num_classes) if num_classes > 0 else False)
    if bad.any():
        i = int(np.argmax(bad))
        what = f"image {i}" + (f" ({names[i]})" if names else "")
        allowed = f"0..{num_classes - 1}" if num_classes > 0 else ">= 0"
        raise DataError(f"{where}: label of {what} is {int(labels[i])}, outside {allowed}")
    return labels.astype(np.int64)


def read_npz_images(path: str | Path, layout: str = "auto") -> ImageArrays:
    """Load ``images`` (uint8; NHWC, NCHW or (N, H, W)) and optional ``labels`` from an .npz file.

    ``layout`` is "auto" (channels = the axis of size 1 or 3), "NHWC" or "NCHW"; returns NHWC.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist (expected an .npz file with a uint8 'images' array)")
    if path.is_dir():
        raise DataError(f"{path} is a folder; npz-images reads one .npz file (image-folder reads folders)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data.files:
                raise DataError(f"{path}: no array 'images' (arrays: {', '.join(data.files) or 'none'})")
            images = data["images"]
            labels = data["labels"] if "labels" in data.files else None
            class_names = tuple(str(c) for c in data["class_names"]) if "class_names" in data.files else None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as .npz ({type(exc).__name__}: {exc})") from exc
    if images.dtype != np.uint8:
        raise DataError(f"{path}: 'images' must be uint8 (0..255), got {images.dtype}; convert with "
                        f"np.clip(np.rint(x), 0, 255).astype(np.uint8) after scaling")
    images = to_nhwc(images, layout, f"{path}['images']")
    if images.shape[0] == 0:
        raise DataError(f"{path}: 'images' is empty (shape {images.shape})")
    if labels is not None:
        labels = check_labels(labels, images.shape[0], f"{path}['labels']")
    return ImageArrays(images, labels, class_names)


def to_nhwc(images: np.ndarray, layout: str, where: str) -> np.ndarray:
    """Bring a uint8 image stack to (N, H, W, C), deciding the channel axis by ``layout``."""
    if images.ndim == 3:
        return images[..., None]
    if images.ndim != 4:
        raise DataError(f"{where}: expected shape (N, H, W, C), (N, C, H, W) or (N, H, W), got {images.shape}")
    if layout == "auto":
        last, second = images.shape[3] in (1, 3), images.shape[1] in (1, 3)
        if last == second:
            raise DataError(f"{where}: cannot tell the channel axis of shape {images.shape}; set "
                            f"layout = \"NHWC\" or \"NCHW\"")
        layout = "NHWC" if last else "NCHW"
    if layout == "NCHW":
        return np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    if layout != "NHWC":
        raise DataError(f"{where}: layout must be 'auto', 'NHWC' or 'NCHW', not {layout!r}")
    return images


def write_npz(dest: str | Path, arrays: ImageArrays, compress: bool = False) -> Path:
    """Write the npz format atomically (a partial file never replaces ``dest``)."""
    dest = Path(dest)
    if dest.suffix.lower() != ".npz":
        raise DataError(f"{dest}: the output file must end in .npz")
    out: dict[str, np.ndarray] = {"images": arrays.images}
    if arrays.labels is not None:
        out["labels"] = arrays.labels.astype(np.int64)
    if arrays.class_names is not None:
        out["class_names"] = np.array(arrays.class_names, dtype=str)
    try:
        with atomic_write(dest) as tmp, open(tmp, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **out)
    except OSError as exc:
        raise DataError(f"{dest}: cannot write ({exc})") from exc
    return dest


def summary(arrays: ImageArrays) -> Iterator[str]:
    """Human-readable lines about a loaded data set."""
    n, h, w, c = arrays.images.shape
    yield f"images: {n} of {w}x{h}, {c} channel{'s' if c != 1 else ''}, uint8"
    mean = arrays.images.reshape(-1, c).mean(0)
    yield "pixel mean per channel: " + ", ".join(f"{m:.2f}" for m in mean)
    if arrays.labels is None:
        yield "labels: none"
    else:
        counts = np.bincount(arrays.labels)
        yield f"labels: {len(counts)} classes, {int(counts.min())}..{int(counts.max())} images per class"
        if arrays.class_names:
            names = list(arrays.class_names)
            yield "classes: " + ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")


def read_idx_folder(root: str | Path) -> dict[str, ImageArrays]:
    """Every split of a folder of IDX files (e.g. ``train`` and ``t10k``), as grey (N, H, W, 1) images."""
    root = Path(root)
    prefixes = idx_prefixes(root)
    if not prefixes:
        raise DataError(f"{root}: no IDX files ({{split}}-images-idx3-ubyte[.gz] with labels) found")
    out = {}
    for prefix in prefixes:
        images, labels = read_split(root, prefix)
        out[prefix] = ImageArrays(images[..., None], labels)
    return out


__all__ = ["ImageArrays", "check_labels", "read_idx_folder", "read_npz_images", "summary", "to_nhwc", "write_npz"]
