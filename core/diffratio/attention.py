"""Named attention backends shared by every backbone: ``attention(q, k, v, backend)``.

Layout: ``q``, ``k``, ``v`` and the result are ``(B, heads, N, head_dim)`` (batch, heads, tokens, channels
per head), the layout of ``torch.nn.functional.scaled_dot_product_attention``. Attention is plain softmax
attention with scale ``head_dim ** -0.5``, no mask and no dropout.

Backends:

- ``sdpa``: PyTorch's ``scaled_dot_product_attention`` (flash / memory-efficient / math kernels chosen by
  PyTorch); the default.
- ``math``: an explicit ``softmax(q k^T / sqrt(d)) v`` in float32, the reference for parity tests.
- ``xformers``: ``xformers.ops.memory_efficient_attention``, CUDA only, imported lazily when first chosen.

Backbones call ``check_backend`` when they are built so that a recipe asking for an unusable backend
fails at start-up with a message that says what to do, not in the first training step.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
from types import ModuleType
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from diffratio.errors import DiffRatioError, MissingDependencyError

#: the name of an attention backend, as a backbone's ``attention`` setting holds it
Backend = Literal["sdpa", "math", "xformers"]
BACKENDS: tuple[str, ...] = get_args(Backend)
"""Every backend name ``attention`` understands."""

_CUDART = "libcudart.so.12"
_xops: ModuleType | None = None  # xformers.ops once imported
_xformers_ok: set[str] = set()  # CUDA devices on which a probe call of xformers succeeded


def attention(q: Tensor, k: Tensor, v: Tensor, backend: Backend = "sdpa") -> Tensor:
    """Softmax attention of ``(B, heads, N, head_dim)`` tensors through the named backend."""
    if backend == "sdpa":
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    if backend == "math":
        return _math_attention(q, k, v)
    if backend == "xformers":
        return _xformers_attention(q, k, v)
    raise DiffRatioError(_unknown(backend))


def check_backend(backend: str, device: torch.device | str | None = None) -> None:
    """Raise a ``DiffRatioError`` saying what to do unless ``backend`` works on ``device``.

    ``device=None`` means the device a model will run on is not known yet (backbones are built on the CPU
    and moved later): ``xformers`` then needs CUDA to be present and is probed on the current CUDA device.
    """
    if backend not in BACKENDS:
        raise DiffRatioError(_unknown(backend))
    if backend != "xformers":
        return
    if device is not None and torch.device(device).type != "cuda":
        raise DiffRatioError(f"attention backend 'xformers' runs on CUDA only, not on {torch.device(device)}: "
                             "choose attention = \"sdpa\"")
    if not torch.cuda.is_available():
        raise DiffRatioError("attention backend 'xformers' runs on CUDA only and no CUDA device is available: "
                             "choose attention = \"sdpa\"")
    _load_xformers()
    _probe_xformers(torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device()))


def _unknown(backend: str) -> str:
    return f"unknown attention backend {backend!r}; choose one of {', '.join(repr(b) for b in BACKENDS)}"


def _math_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    scale = q.shape[-1] ** -0.5
    w = torch.softmax((q.float() @ k.float().transpose(-2, -1)) * scale, dim=-1)
    return (w @ v.float()).to(q.dtype)


def _xformers_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    if not q.is_cuda:
        raise DiffRatioError(f"attention backend 'xformers' runs on CUDA tensors only, got tensors on {q.device}: "
                             "choose attention = \"sdpa\" for CPU runs")
    ops = _xops if _xops is not None else _load_xformers()
    if str(q.device) not in _xformers_ok:
        _probe_xformers(q.device)
    # xformers' layout is (B, N, heads, head_dim): transposes are views, the last dimension stays contiguous
    out = ops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _load_xformers() -> ModuleType:
    global _xops
    if _xops is None:
        try:
            _xops = importlib.import_module("xformers.ops")
        except ImportError as exc:
            raise MissingDependencyError(
                "xformers", "attention backend 'xformers'",
                "pip install xformers (or choose attention = \"sdpa\")") from exc
    return _xops


def _probe_xformers(device: torch.device) -> None:
    """Run one tiny xformers call on ``device``; explain the failure when its CUDA runtime is missing."""
    ops = _load_xformers()
    x = torch.zeros(1, 8, 1, 32, device=device, dtype=torch.float16)
    try:
        ops.memory_efficient_attention(x, x, x)
    except NotImplementedError as exc:
        if not _cudart12_loadable():
            raise DiffRatioError(
                f"xformers is installed but cannot run: its CUDA runtime {_CUDART} is not found (this PyTorch "
                f"build uses CUDA {torch.version.cuda}). Install nvidia-cuda-runtime-cu12 and put its library "
                f"folder on LD_LIBRARY_PATH before Python starts{_cudart_hint()}, or choose attention = \"sdpa\"."
            ) from exc
        raise DiffRatioError(f"xformers has no attention kernel usable on {device}: {exc}; "
                             "choose attention = \"sdpa\"") from exc
    _xformers_ok.add(str(device))


def _cudart12_loadable() -> bool:
    try:
        ctypes.CDLL(_CUDART)
    except OSError:
        return False
    return True


def _cudart_hint() -> str:
    """`` (export LD_LIBRARY_PATH=...)`` when the pip package nvidia-cuda-runtime-cu12 is installed."""
    spec: Any = None
    try:
        spec = importlib.util.find_spec("nvidia.cuda_runtime")
    except (ImportError, ValueError):
        pass
    if spec is None or not spec.submodule_search_locations:
        return (" (pip install nvidia-cuda-runtime-cu12, then "
                "export LD_LIBRARY_PATH=<site-packages>/nvidia/cuda_runtime/lib:$LD_LIBRARY_PATH)")
    lib = os.path.join(next(iter(spec.submodule_search_locations)), "lib")
    return f" (export LD_LIBRARY_PATH={lib}:$LD_LIBRARY_PATH)"


__all__ = ["BACKENDS", "Backend", "attention", "check_backend"]
