"""2-D data sets: Gaussian mixtures on a ring and a grid, two moons, and points from an .npz file."""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import torch
from torch import Tensor

from diffratio import DataError, Dataset
from diffratio.analytic import GaussianMixture, grid, ring
from diffratio.config import setting
from diffratio_builtins.datasets.validate import check_array, read_npz_array

HOLDOUT_SEED = 987654321  # reference points come from a stream the training data never uses


class PointDataset(Dataset):
    """Points held as one (N, d) float tensor; training draws rows by index."""

    points: Tensor

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (self.points.shape[1],)

    def __len__(self) -> int:
        return self.points.shape[0]

    def get(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.points[index], None

    def to(self, device: torch.device) -> PointDataset:
        self.points = self.points.to(device)
        return self

    @property
    def sigma_data(self) -> float:
        return float(self.points.float().std(0).mean())


class MixtureDataset(PointDataset):
    """A finite sample of an analytic mixture; ``reference`` draws fresh held-out points of it."""

    mixture: GaussianMixture

    def _init(self, mixture: GaussianMixture, num_points: int, seed: int) -> None:
        self.mixture = mixture
        self.points = mixture.sample(num_points, torch.Generator().manual_seed(seed)).float()

    def reference(self, n: int) -> Tensor:
        return self.mixture.sample(n, torch.Generator().manual_seed(HOLDOUT_SEED)).float()

    @property
    def sigma_data(self) -> float:
        return self.mixture.std()


class Ring(MixtureDataset):
    """Equal-weight Gaussians evenly spaced on a circle."""

    @attrs.frozen(kw_only=True)
    class Config:
        components: int = setting(8, "Gaussians on the circle", ge=1)
        radius: float = setting(2.0, "radius of the circle", gt=0)
        std: float = setting(0.1, "standard deviation of each Gaussian", gt=0)
        num_points: int = setting(50_000, "size of the training sample", ge=2)
        seed: int = setting(0, "seed of the training sample")

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        c = self.config
        self._init(ring(c.components, c.radius, c.std), c.num_points, c.seed)


class Grid(MixtureDataset):
    """Equal-weight Gaussians on a centred square grid."""

    @attrs.frozen(kw_only=True)
    class Config:
        side: int = setting(5, "Gaussians per side (side^2 in all)", ge=1)
        spacing: float = setting(1.0, "distance between neighbouring Gaussians", gt=0)
        std: float = setting(0.05, "standard deviation of each Gaussian", gt=0)
        num_points: int = setting(50_000, "size of the training sample", ge=2)
        seed: int = setting(0, "seed of the training sample")

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        c = self.config
        self._init(grid(c.side, c.spacing, c.std), c.num_points, c.seed)


def _moons(n: int, noise: float, g: torch.Generator) -> Tensor:
    t = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    pts = torch.stack([x - 0.5, y - 0.25], 1) * 2  # centred, about unit scale
    return (pts + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


class TwoMoons(PointDataset):
    """Two interleaving half circles with Gaussian noise."""

    @attrs.frozen(kw_only=True)
    class Config:
        noise: float = setting(0.05, "standard deviation of the Gaussian noise added to the points", ge=0)
        num_points: int = setting(50_000, "size of the training sample", ge=2)
        seed: int = setting(0, "seed of the training sample")

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        self.points = _moons(self.config.num_points, self.config.noise, torch.Generator().manual_seed(
            self.config.seed))

    def reference(self, n: int) -> Tensor:
        return _moons(n, self.config.noise, torch.Generator().manual_seed(HOLDOUT_SEED))


class NpzPoints(PointDataset):
    """Points (N, d) read from an array in an .npz file; a held-out fraction serves as reference."""

    @attrs.frozen(kw_only=True)
    class Config:
        path: str = setting(doc=".npz file holding the points, relative to the working directory; the array is "
                                "numeric (N, d) with N >= 2 and is trained on as float32")
        key: str = setting("x", "name of the array inside the .npz file")
        holdout: float = setting(0.1, "fraction of the points held out (never trained on) as the reference of "
                                      "metrics", ge=0, lt=1)

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        path = Path(config.path)
        where = f"dataset npz-points ({path}[{config.key!r}])"
        arr = read_npz_array(path, config.key, "dataset npz-points (dataset.path)")
        pts = torch.from_numpy(check_array(arr, where, expected="(N, d)", ndim=2))
        perm = torch.randperm(len(pts), generator=torch.Generator().manual_seed(0))
        n_hold = int(round(config.holdout * len(pts)))
        if len(pts) - n_hold < 2:
            raise DataError(f"{where}: of its {len(pts)} rows dataset.holdout = {config.holdout} leaves "
                            f"{len(pts) - n_hold} to train on; lower dataset.holdout or add rows")
        self.held = pts[perm[:n_hold]]
        self.points = pts[perm[n_hold:]]

    def reference(self, n: int) -> Tensor:
        src = self.held if len(self.held) else self.points.cpu()
        return src[:n]
