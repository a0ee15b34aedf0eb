"""The named attention backends: parity between them, and the errors that tell a user what to do."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from diffratio import DiffRatioError, MissingDependencyError
from diffratio import attention as attn


def _qkv(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, device: str = "cpu",
         seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return [(2 * torch.randn(shape, generator=g)).to(device=device, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("shape", [(2, 3, 17, 8), (1, 1, 64, 32), (3, 4, 5, 16)])
def test_sdpa_matches_math_reference(shape: tuple[int, ...]) -> None:
    q, k, v = _qkv(shape)
    ref = attn.attention(q, k, v, "math")
    # explicit formula, so the reference itself is checked too
    w = torch.softmax(q @ k.transpose(-1, -2) / shape[-1] ** 0.5, dim=-1)
    torch.testing.assert_close(ref, w @ v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn.attention(q, k, v, "sdpa"), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn.attention(q, k, v), ref, atol=1e-5, rtol=1e-5)  # sdpa is the default


def test_backends_agree_on_gradients_and_strided_inputs() -> None:
    # a (B, N, heads, D) tensor viewed as (B, heads, N, D), as the backbones produce it
    q, k, v = (t.transpose(1, 2).requires_grad_() for t in _qkv((2, 9, 3, 8)))
    grads = []
    for backend in ("sdpa", "math"):
        out = attn.attention(q, k, v, backend)
        grads.append(torch.autograd.grad((out * torch.arange(8.0)).sum(), (q, k, v)))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_unknown_backend_lists_the_choices() -> None:
    q, k, v = _qkv((1, 1, 4, 8))
    with pytest.raises(DiffRatioError, match=r"unknown attention backend 'flash'.*'sdpa', 'math', 'xformers'"):
        attn.attention(q, k, v, "flash")
    with pytest.raises(DiffRatioError, match="unknown attention backend 'SDPA'"):
        attn.check_backend("SDPA")


def test_xformers_refuses_cpu_tensors_with_a_clear_message() -> None:
    q, k, v = _qkv((1, 1, 4, 8))
    with pytest.raises(DiffRatioError, match="CUDA tensors only.*choose attention = \"sdpa\""):
        attn.attention(q, k, v, "xformers")
    with pytest.raises(DiffRatioError, match="CUDA only, not on cpu"):
        attn.check_backend("xformers", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_without_cuda_only_sdpa_and_math_are_available() -> None:
    for name in ("sdpa", "math"):
        attn.check_backend(name)
    with pytest.raises(DiffRatioError, match="no CUDA device is available"):
        attn.check_backend("xformers")


def test_missing_xformers_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attn, "_xops", None)
    monkeypatch.setitem(sys.modules, "xformers", None)  # makes `import xformers` fail
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    with pytest.raises(MissingDependencyError, match="'xformers'.*pip install xformers"):
        attn.check_backend("xformers")


def _fake_xformers(monkeypatch: pytest.MonkeyPatch, cudart_present: bool) -> None:
    """An xformers whose kernels all raise NotImplementedError, as when libcudart.so.12 is missing."""

    def memory_efficient_attention(*args: object, **kwargs: object) -> torch.Tensor:
        raise NotImplementedError("No operator found for `memory_efficient_attention_forward`")

    monkeypatch.setattr(attn, "_xops", types.SimpleNamespace(memory_efficient_attention=memory_efficient_attention))
    monkeypatch.setattr(attn, "_cudart12_loadable", lambda: cudart_present)


def test_missing_cuda_runtime_of_xformers_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_xformers(monkeypatch, cudart_present=False)
    with pytest.raises(DiffRatioError, match=r"libcudart\.so\.12.*nvidia-cuda-runtime-cu12.*LD_LIBRARY_PATH"):
        attn._probe_xformers(torch.device("cpu"))
    _fake_xformers(monkeypatch, cudart_present=True)
    with pytest.raises(DiffRatioError, match="no attention kernel usable.*No operator found"):
        attn._probe_xformers(torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_xformers_matches_sdpa_on_gpu(dtype: torch.dtype) -> None:
    pytest.importorskip("xformers.ops")
    attn.check_backend("xformers", "cuda")
    tol = 2e-3 if dtype == torch.float32 else 2e-2
    q, k, v = (t.requires_grad_() for t in _qkv((4, 8, 256, 64), dtype=dtype, device="cuda"))
    outs, grads = [], []
    for backend in ("sdpa", "xformers", "math"):
        out = attn.attention(q, k, v, backend)
        outs.append(out.float())
        grads.append(torch.autograd.grad(out.float().square().sum(), (q, k, v)))
    torch.testing.assert_close(outs[1], outs[0], atol=tol, rtol=tol)
    torch.testing.assert_close(outs[2], outs[0], atol=tol, rtol=tol)
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=10 * tol, rtol=10 * tol)
