"""Conformance of data sets, and ``GaussianPoints``, the default data of the metric and method checks."""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from torch import Tensor

from diffratio.components import Dataset
from diffratio.config import setting
from diffratio.testing._shared import Reporter, check_config, check_stored_config, names_component, seeded


class GaussianPoints(Dataset):
    """Standard normal points in ``dim`` dimensions: the default data of the metric and method checks."""

    @attrs.frozen(kw_only=True)
    class Config:
        dim: int = setting(2, "dimension of the points", ge=1)
        num_points: int = setting(4096, "training sample size", ge=1)
        seed: int = setting(0, "seed of the training sample")

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.points = torch.randn(c.num_points, c.dim, generator=torch.Generator().manual_seed(c.seed))

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (self.config.dim,)

    @property
    def sigma_data(self) -> float:
        return 1.0

    def __len__(self) -> int:
        return self.points.shape[0]

    def get(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.points[index], None

    def to(self, device: torch.device) -> GaussianPoints:
        self.points = self.points.to(device)
        return self

    def reference(self, n: int) -> Tensor:
        return torch.randn(n, self.config.dim, generator=torch.Generator().manual_seed(self.config.seed + 1))


@names_component("dataset")
def check_dataset(cls: type, config: Any = None, *, num_indices: int = 8) -> None:
    """Shapes and dtypes of ``get`` and ``reference``, labels in range, finite data, the same data for the
    same config (random augmentation under the same seed included)."""
    rep = Reporter("dataset", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, Dataset), "must derive from diffratio.Dataset")
    config = check_config(cls, config, kind="dataset")
    ds = cls(config)
    check_stored_config(rep, ds, config)
    moved = ds.to(torch.device("cpu"))
    rep.require(isinstance(moved, Dataset), f"to(device) must return the data set, got {type(moved).__name__}")
    ds = moved
    shape = ds.data_shape
    rep.require(isinstance(shape, tuple) and shape and all(isinstance(d, int) and d > 0 for d in shape),
                f"data_shape must be a tuple of positive ints, got {shape!r}")
    n = len(ds)
    rep.require(isinstance(n, int) and n > 0, f"len() must be a positive int, got {n!r}")
    k = ds.num_labels
    rep.require(isinstance(k, int) and k >= 0, f"num_labels must be an int >= 0, got {k!r}")
    sd = ds.sigma_data
    rep.require(isinstance(sd, float) and math.isfinite(sd) and sd > 0, f"sigma_data must be a float > 0, got {sd!r}")

    idx = torch.linspace(0, n - 1, min(num_indices, n)).round().long()
    with seeded(0):
        x, y = ds.get(idx)
    rep.shape(x, (len(idx), *shape), f"get() of {len(idx)} indices")
    rep.require(x.is_floating_point(), f"get() must return float samples (model units), got {x.dtype}")
    rep.finite(x, "get()")
    if k == 0:
        rep.require(y is None, "get() returns labels but num_labels is 0")
    else:
        rep.require(y is not None, f"num_labels is {k} but get() returns no labels")
        assert y is not None
        rep.shape(y, (len(idx),), "labels")
        rep.require(not y.is_floating_point() and y.dtype != torch.bool, f"labels must be integers, got {y.dtype}")
        rep.require(bool(((y >= 0) & (y < k)).all()), f"labels outside [0, {k}): {y.tolist()}")
    ref = ds.reference(16)
    rep.require(ref.device.type == "cpu" and ref.is_floating_point(), "reference() must return float tensors on CPU")
    rep.require(tuple(ref.shape[1:]) == shape and 0 < ref.shape[0] <= 16,
                f"reference(16) has shape {tuple(ref.shape)}, expected (<= 16, *{shape})")
    rep.finite(ref, "reference()")
    image = ds.to_image(x)
    if image is not None:
        rep.require(image.dtype == torch.uint8 and image.ndim == 4 and image.shape[0] == len(idx),
                    f"to_image must give uint8 (B, C, H, W), got {image.dtype} {tuple(image.shape)}")

    again = cls(config)
    with seeded(0):
        x2, y2 = again.get(idx)
    rep.require(torch.equal(x, x2) and (y is None or torch.equal(y, y2)),
                "two data sets built from the same config give different samples (seed the data)")
    rep.require(torch.equal(ref, again.reference(16)), "reference() differs between two builds of the same config")


