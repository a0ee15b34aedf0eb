"""uint8 image arrays for the feature networks: checking them, reading them from ``.npz``, and turning a
data set's model-space samples into them."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffratio.components import Dataset
from diffratio.errors import DataError


def as_uint8_images(images: Tensor | np.ndarray, what: str = "images") -> Tensor:
    """Check and return uint8 images (N, C, H, W) with C in (1, 3) as a CPU or device tensor."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8:
        raise DataError(f"{what} must be uint8 pixels 0..255 of shape (N, C, H, W), got dtype {t.dtype}")
    if t.ndim == 3:  # (N, H, W) grey
        t = t.unsqueeze(1)
    if t.ndim != 4 or t.shape[1] not in (1, 3):
        raise DataError(f"{what} must have shape (N, C, H, W) with C = 1 or 3, got {tuple(t.shape)}")
    return t


def load_images_npz(path: str | Path, num: int | None = None, *, at_least: int = 0) -> np.ndarray:
    """uint8 images (N, C, H, W) from the ``images`` array of an ``.npz`` (as ``dr-sample`` writes it).

    (N, H, W) grey and (N, H, W, C) channel-last arrays are accepted too; ``num`` keeps the first ones;
    fewer than ``at_least`` images is an error. Every problem (missing, unreadable, no ``images``, wrong
    dtype or shape) is a ``DataError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist (expected an .npz with a uint8 'images' array, as dr-sample "
                        "writes it)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z:
                raise DataError(f"{path} has no 'images' array (it has {sorted(z.files)}); samples of image data "
                                "written by dr-sample have one")
            arr = z["images"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} cannot be read as .npz ({type(exc).__name__}: {exc})") from exc
    if arr.ndim == 4 and arr.shape[1] not in (1, 3) and arr.shape[3] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    arr = as_uint8_images(arr, what=f"'images' of {path}").numpy()
    if num is not None:
        if num > arr.shape[0]:
            raise DataError(f"{path} holds {arr.shape[0]} images, fewer than the {num} asked for")
        arr = arr[:num]
    if arr.shape[0] < at_least:
        raise DataError(f"{path} holds {arr.shape[0]} images; at least {at_least} are needed")
    return np.ascontiguousarray(arr)


def image_data_error(ds: Dataset, what: str) -> DataError:
    """The error for a non-image data set given to an image metric."""
    name = ds.registered_name or type(ds).__name__
    return DataError(f"{what} needs image data, but data set {name!r} of shape {tuple(ds.data_shape)} gives no "
                     "images; use an image data set, or a metric for this data (e.g. energy-distance)")


def check_image_data(ds: Dataset, what: str) -> None:
    """Raise ``image_data_error`` unless ``ds.to_image`` turns one sample into an image (a cheap probe)."""
    if ds.to_image(torch.zeros(1, *ds.data_shape)) is None:
        raise image_data_error(ds, what)


def dataset_images(ds: Dataset, x: Tensor, what: str = "this metric", chunk: int = 1000) -> Tensor:
    """uint8 (B, C, H, W) CPU images of model-space samples via ``ds.to_image``; a clear error for
    data sets that are not images."""
    out: list[Tensor] = []
    for part in x.split(chunk):
        img = ds.to_image(part)
        if img is None:
            raise image_data_error(ds, what)
        out.append(as_uint8_images(img.cpu(), what=f"to_image output of {type(ds).__name__}"))
    return torch.cat(out) if out else torch.zeros(0, 1, 1, 1, dtype=torch.uint8)


__all__ = ["as_uint8_images", "check_image_data", "dataset_images", "image_data_error", "load_images_npz"]
