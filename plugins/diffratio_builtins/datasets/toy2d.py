"""2-D data sets: Gaussian mixtures on a ring and a grid, two moons, and points from an .npz file."""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import numpy as np
import torch
from torch import Tensor

from diffratio import DataError, Dataset
from diffratio.analytic import GaussianMixture, grid, ring

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
        components: int = attrs.field(default=8, validator=attrs.validators.ge(1))  # Gaussians on the circle
        radius: float = attrs.field(default=2.0, validator=attrs.validators.gt(0))  # radius of the circle
        std: float = attrs.field(default=0.1, validator=attrs.validators.gt(0))  # standard deviation of each Gaussian
        num_points: int = attrs.field(default=50_000, validator=attrs.validators.ge(1))  # training sample
        seed: int = 0  # seed of the training sample

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        c = self.config
        self._init(ring(c.components, c.radius, c.std), c.num_points, c.seed)


class Grid(MixtureDataset):
    """Equal-weight Gaussians on a centred square grid."""

    @attrs.frozen(kw_only=True)
    class Config:
        side: int = attrs.field(default=5, validator=attrs.validators.ge(1))  # Gaussians per side (side^2 in all)
        spacing: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))  # distance between neighbours
        std: float = attrs.field(default=0.05, validator=attrs.validators.gt(0))  # standard deviation of each Gaussian
        num_points: int = attrs.field(default=50_000, validator=attrs.validators.ge(1))  # training sample
        seed: int = 0  # seed of the training sample

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
        noise: float = attrs.field(default=0.05, validator=attrs.validators.ge(0))  # std of the Gaussian noise added
        num_points: int = attrs.field(default=50_000, validator=attrs.validators.ge(1))  # training sample
        seed: int = 0  # seed of the training sample

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
        path: str  # .npz file
        key: str = "x"  # array name inside the file
        holdout: float = attrs.field(default=0.1, validator=[attrs.validators.ge(0), attrs.validators.lt(1)])
        # ^ fraction of the points held out (never trained on) as the reference of metrics

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        p = Path(config.path)
        if not p.exists():
            raise DataError(f"dataset.path: {p} does not exist (an .npz file with an (N, d) array "
                            f"named {config.key!r})")
        try:
            with np.load(p) as data:
                if config.key not in data:
                    raise DataError(f"dataset.key: {p} has no array {config.key!r} (arrays: "
                                    f"{', '.join(data.files) or 'none'})")
                arr = np.asarray(data[config.key])
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"dataset.path: {p} could not be read as .npz: {exc}") from exc
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise DataError(f"dataset: {p}[{config.key!r}] must be a non-empty (N, d) array, got shape "
                            f"{arr.shape}")
        if not np.isfinite(arr).all():
            bad = int(np.argwhere(~np.isfinite(arr))[0, 0])
            raise DataError(f"dataset: {p}[{config.key!r}] row {bad} is not finite")
        pts = torch.from_numpy(arr.astype(np.float32))
        perm = torch.randperm(len(pts), generator=torch.Generator().manual_seed(0))
        n_hold = int(round(config.holdout * len(pts)))
        self.held = pts[perm[:n_hold]]
        self.points = pts[perm[n_hold:]]

    def reference(self, n: int) -> Tensor:
        src = self.held if len(self.held) else self.points.cpu()
        return src[:n]
