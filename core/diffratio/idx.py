"""The IDX format of MNIST-style data sets: ``{prefix}-images-idx3-ubyte`` and ``{prefix}-labels-idx1-ubyte``,
optionally gzipped. One reader for the data sets and for ``dr-dataset info``.

An IDX file of unsigned bytes is the magic ``00 00 08 ndim``, ``ndim`` big-endian uint32 sizes, then the
data. Errors are ``DataError`` naming the file and what is wrong with it (missing, truncated, wrong magic
number or size).
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from diffratio.errors import DataError

_IMAGES = re.compile(r"^(?P<prefix>.+)-images-idx3-ubyte(\.gz)?$")


def find_idx(root: Path, stem: str, missing_hint: str = "") -> Path:
    """``root/stem.gz`` if it exists, else ``root/stem``; a ``DataError`` (with ``missing_hint``) if neither."""
    gz, plain = root / f"{stem}.gz", root / stem
    if gz.exists():
        return gz
    if plain.exists():
        return plain
    raise DataError(f"{gz} does not exist{missing_hint}")


def read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzipped when its name ends in .gz); ``ndim`` checks the rank."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc})") from exc
    rank = raw[3] if len(raw) >= 4 else -1
    header = 4 + 4 * max(rank, 0)
    if (len(raw) < header or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or rank < 1
            or (ndim is not None and rank != ndim)):
        magic = raw[:4].hex() if len(raw) >= 4 else "missing"
        want = f"000008{ndim:02x}" if ndim is not None else "000008 and a rank"
        raise DataError(f"{path}: not an IDX file of unsigned bytes{f' with {ndim} dimensions' if ndim else ''} "
                        f"(magic {magic}, expected {want})")
    dims = struct.unpack(f">{rank}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{path}: header says shape {dims} ({expected} bytes) but the file holds "
                        f"{len(raw) - header} bytes of data")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()  # writable, owns its memory


def read_split(root: Path, prefix: str, missing_hint: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) int64 of one split, e.g. ``train`` or ``t10k``."""
    images = read_idx(find_idx(root, f"{prefix}-images-idx3-ubyte", missing_hint), 3)
    labels = read_idx(find_idx(root, f"{prefix}-labels-idx1-ubyte", missing_hint), 1)
    if len(labels) != len(images):
        raise DataError(f"{root}: {prefix} has {len(images)} images but {len(labels)} labels")
    return images, labels.astype(np.int64)


def idx_prefixes(root: Path) -> list[str]:
    """The splits of a folder of IDX files (``train``, ``t10k``, ...), sorted; empty when it holds none."""
    if not root.is_dir():
        return []
    found = {m.group("prefix") for p in root.iterdir() if (m := _IMAGES.match(p.name))}
    return sorted(found)


__all__ = ["find_idx", "idx_prefixes", "read_idx", "read_split"]
