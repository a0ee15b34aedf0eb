"""Feature statistics (mean, covariance, count) and their cache.

``FeatureStats`` is saved as ``.npz``; ``load_or_compute_stats`` keeps one file per key (the data, the
number of images, the weights' hash and the preprocessing), and ``reference_stats`` computes the
statistics of a reference (a data set or an images file) once and reuses them. A cache file is written
only when complete, and both writing and reuse are announced with the file's path and size.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from diffratio.components import Dataset
from diffratio.errors import DataError
from diffratio.fid.features import PREPROCESS_VERSION, InceptionFeatures, file_sha1
from diffratio.fid.frechet import frechet_distance
from diffratio.fid.images import dataset_images, load_images_npz
from diffratio.longjob import atomic_write, describe_file, notify


def default_cache_dir() -> Path:
    """``$DIFFRATIO_CACHE`` if set, else ``~/.cache/diffratio``."""
    env = os.environ.get("DIFFRATIO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "diffratio"


def array_sha1(*arrays: Tensor | np.ndarray) -> str:
    """sha1 of the bytes, dtypes and shapes of arrays (the identity of images or labels in cache keys)."""
    h = hashlib.sha1()
    for a in arrays:
        arr = np.ascontiguousarray(a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a))
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def key_digest(key: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-able cache key."""
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@attrs.define(eq=False)
class FeatureStats:
    """Mean, covariance and count of a feature set; optionally the features (for precision/recall)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    features: np.ndarray | None = None
    meta: dict[str, Any] = attrs.field(factory=dict)

    @classmethod
    def from_features(cls, feats: np.ndarray, *, keep_features: bool = False,
                      meta: Mapping[str, Any] | None = None) -> FeatureStats:
        f = np.asarray(feats, np.float64)
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"need at least 2 feature vectors (N, D), got shape {f.shape}")
        return cls(mu=f.mean(0), sigma=np.cov(f, rowvar=False), count=f.shape[0],
                   features=np.asarray(feats, np.float32) if keep_features else None, meta=dict(meta or {}))

    def frechet_distance(self, other: FeatureStats, device: str | torch.device = "cpu") -> float:
        """FD between the two Gaussians (``device``: where the eigen-decompositions run)."""
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma, device=device)

    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` (``mu``, ``sigma``, ``count``, ``meta`` as JSON, ``features`` if held); the file
        appears only when complete."""
        path = Path(path)
        arrays: dict[str, Any] = {"mu": self.mu, "sigma": self.sigma, "count": np.int64(self.count),
                                  "meta": np.array(json.dumps(self.meta, sort_keys=True, default=str))}
        if self.features is not None:
            arrays["features"] = self.features
        with atomic_write(path, suffix=".npz") as tmp:
            np.savez(tmp, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Read statistics written by ``save`` or any FID ``.npz`` holding ``mu`` and ``sigma``."""
        with np.load(path, allow_pickle=False) as z:
            if "mu" not in z or "sigma" not in z:
                raise DataError(f"{path} holds no FID statistics (arrays 'mu' and 'sigma'); it has {sorted(z.files)}")
            meta = json.loads(str(z["meta"])) if "meta" in z else {}
            return cls(mu=z["mu"].astype(np.float64), sigma=z["sigma"].astype(np.float64),
                       count=int(z["count"]) if "count" in z else 0,
                       features=z["features"] if "features" in z else None, meta=meta)


def load_or_compute_stats(path: str | Path, key: Mapping[str, Any], features: Callable[[], np.ndarray], *,
                          keep_features: bool = False) -> FeatureStats:
    """Statistics cached in ``path``: reused when its stored key equals ``key`` (and it holds features if
    ``keep_features``), else computed from ``features()`` and written there."""
    path = Path(path)
    key = json.loads(json.dumps(dict(key), sort_keys=True, default=str))
    if path.is_file():
        try:
            st = FeatureStats.load(path)
        except (DataError, OSError, ValueError):
            st = None
        if st is not None and st.meta.get("key") == key and (st.features is not None or not keep_features):
            notify(f"using cached FID statistics {describe_file(path)}")
            return st
    st = FeatureStats.from_features(features(), keep_features=keep_features, meta={"key": key})
    st.save(path)
    notify(f"cached FID statistics of {st.count} images in {describe_file(path)}")
    return st


def holds_stats(path: str | Path) -> bool:
    """Whether an ``.npz`` holds FID statistics (``mu`` and ``sigma``) rather than images."""
    with np.load(path, allow_pickle=False) as z:
        return "mu" in z and "sigma" in z


def dataset_identity(ds: Dataset) -> dict[str, Any]:
    """What makes a data set's reference images what they are: its class, name, config, size and shape."""
    cfg = attrs.asdict(ds.config) if attrs.has(type(ds.config)) else repr(ds.config)
    return {"class": f"{type(ds).__module__}.{type(ds).__qualname__}", "name": ds.registered_name,
            "config": json.loads(json.dumps(cfg, sort_keys=True, default=str)), "len": len(ds),
            "shape": list(ds.data_shape)}


def _stats_file(path: Path, net: InceptionFeatures, keep_features: bool) -> FeatureStats:
    st = FeatureStats.load(path)
    if keep_features and st.features is None:
        raise DataError(f"precision/recall needs reference features, but {path} holds only statistics; give "
                        "an images .npz or statistics written with features (dr-eval stats --features)")
    sha = st.meta.get("key", {}).get("weights_sha1")
    if sha and sha != net.sha1:
        warnings.warn(f"{path} was computed with FID weights of sha1 {sha[:12]}, not these ({net.sha1[:12]}); "
                      "the distance is not comparable with others", stacklevel=3)
    return st


def reference_stats(source: Dataset | str | Path, net: InceptionFeatures, *, num: int | None = None,
                    cache_dir: str | Path | None = None, keep_features: bool = False,
                    batch_size: int = 64, show_progress: bool = False) -> FeatureStats:
    """FID statistics of a reference, computed once and cached in ``cache_dir/fid`` (default
    ``default_cache_dir()``).

    ``source``: a data set (its ``reference(num)`` images; ``num`` required), an ``.npz`` of uint8
    ``images`` (the first ``num``, default all) or an ``.npz`` of statistics, returned as it is. The cache
    key holds the sha1 of the reference images (or of the file), ``num``, the weights' sha1 and the
    preprocessing version, so a changed data set or network never reuses stale statistics.
    ``show_progress``: a progress display on stderr while the features are computed.
    """
    base = {"weights_sha1": net.sha1, "preprocess": PREPROCESS_VERSION}
    if isinstance(source, Dataset):
        if num is None:
            raise ValueError("reference_stats of a data set needs num")
        ref_images = dataset_images(source, source.reference(num), "FID")  # cheap next to the features
        key = {**base, "dataset": dataset_identity(source), "num": num, "images_sha1": array_sha1(ref_images)}
        label = source.registered_name or type(source).__name__

        def images() -> Tensor | np.ndarray:
            return ref_images
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"FID reference {str(path)!r} does not exist")
        if holds_stats(path):
            return _stats_file(path, net, keep_features)
        key = {**base, "file_sha1": file_sha1(path), "num": num}
        label = path.stem

        def images() -> Tensor | np.ndarray:
            return load_images_npz(path, num, at_least=2)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    file = cache / "fid" / f"{label}-{num if num is not None else 'all'}-{key_digest(key)}.npz"
    desc = f"FID features of reference {label}" if show_progress else None
    return load_or_compute_stats(file, key, lambda: net(images(), batch_size, desc=desc), keep_features=keep_features)


__all__ = [
    "FeatureStats", "array_sha1", "dataset_identity", "default_cache_dir", "holds_stats", "key_digest",
    "load_or_compute_stats", "reference_stats",
]
