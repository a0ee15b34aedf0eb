"""Checks of the arrays a data set reads from a user's file, shared by every built-in data set.

Each check raises ``DataError`` with one message that names the file (``where``) and the problem, so a bad
file stops the run before training with exit status 2 instead of a traceback or a diverging run.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diffratio import DataError

#: first bytes of a zip archive (what np.savez writes); the second is an archive with no members
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
#: dtype kinds that hold numbers: bool, signed and unsigned integers, floats
_NUMERIC = "biuf"


def check_npz_file(path: Path, where: str) -> None:
    """``path`` exists, is a file and is a zip archive, as ``np.savez`` writes it."""
    if not path.exists():
        raise DataError(f"{where}: {path} does not exist")
    if not path.is_file():
        raise DataError(f"{where}: {path} is a folder, expected an .npz file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head not in _ZIP_MAGIC:
        raise DataError(f"{where}: {path} is not an .npz file (a zip archive of arrays, as np.savez writes it); "
                        f"it begins with {head!r}")


def read_npz_array(path: Path, key: str, where: str) -> np.ndarray:
    """The array ``key`` of the .npz file ``path``, read without unpickling anything."""
    check_npz_file(path, where)
    try:
        with np.load(path, allow_pickle=False) as data:
            if key not in data.files:
                raise DataError(f"{where}: {path} has no array {key!r} (arrays: {', '.join(data.files) or 'none'})")
            return np.asarray(data[key])
    except DataError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(f"{where}: {path}[{key!r}] holds Python objects, not numbers; save a numeric array "
                            "(e.g. np.savez(path, x=np.asarray(values, dtype=np.float32)))") from exc
        raise DataError(f"{where}: {path} cannot be read as .npz ({exc})") from exc
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{where}: {path} cannot be read as .npz ({type(exc).__name__}: {exc})") from exc


def check_shape(shape: Sequence[int], where: str, *, expected: str, ndim: int | None = None,
                min_rows: int = 2) -> None:
    """At least one dimension (exactly ``ndim`` when given), no empty dimension, at least ``min_rows`` rows.

    ``expected`` describes the wanted shape for the message, e.g. "(N, d)".
    """
    shape = tuple(int(d) for d in shape)
    if not shape:
        raise DataError(f"{where}: is a single value (shape ()), expected an array of shape {expected}")
    if ndim is not None and len(shape) != ndim:
        raise DataError(f"{where}: has shape {shape}, expected {expected}")
    if 0 in shape[1:]:
        raise DataError(f"{where}: has shape {shape}, which holds no values; expected {expected} with every "
                        "dimension at least 1")
    if shape[0] < min_rows:
        raise DataError(f"{where}: has {shape[0]} row(s) (shape {shape}); at least {min_rows} are needed to train "
                        "and to measure the data's spread")


def to_training_dtype(array: np.ndarray, where: str, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """``array`` cast to the training ``dtype``, refused unless it holds numbers that are finite after the cast."""
    if array.dtype.kind not in _NUMERIC:
        raise DataError(f"{where}: holds {array.dtype} values ({_kind_name(array.dtype)}), expected numbers; "
                        "save the array with a numeric dtype such as float32")
    with np.errstate(over="ignore", invalid="ignore"):
        out = array.astype(dtype, copy=False)
    if out.dtype.kind == "f":
        finite = np.isfinite(out.reshape(out.shape[0], -1)).all(axis=1) if out.ndim else np.isfinite(out)[None]
        if not finite.all():
            row = int(np.argmax(~finite))
            values = array.reshape(array.shape[0], -1)[row] if array.ndim else array[None]
            if np.isfinite(values.astype(np.float64)).all():
                limit = float(np.finfo(out.dtype).max)
                raise DataError(f"{where}: row {row} holds a value beyond the range of {np.dtype(dtype).name} "
                                f"(largest magnitude {limit:.3g}); rescale the data")
            raise DataError(f"{where}: row {row} is not finite (nan or inf); remove or repair that row")
    return out


def check_array(array: np.ndarray, where: str, *, expected: str, ndim: int | None = None, min_rows: int = 2,
                dtype: np.dtype | type = np.float32) -> np.ndarray:
    """``check_shape`` and ``to_training_dtype`` in one: the array as it will be trained on."""
    if array.dtype.kind not in _NUMERIC:  # the dtype first: it is what a text array gets wrong
        to_training_dtype(array, where, dtype)
    check_shape(array.shape, where, expected=expected, ndim=ndim, min_rows=min_rows)
    return to_training_dtype(array, where, dtype)


def _kind_name(dtype: np.dtype) -> str:
    return {"U": "text", "S": "bytes", "O": "Python objects", "c": "complex numbers", "M": "dates",
            "m": "time spans", "V": "raw records"}.get(dtype.kind, dtype.kind)


__all__ = ["check_npz_file", "read_npz_array", "check_shape", "to_training_dtype", "check_array"]
