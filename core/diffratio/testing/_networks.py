"""Helpers of the network checks (backbone, generator, ratio estimator): inputs, gradient flow, and
the determinism and state-dict round trip of a module."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from diffratio.testing._shared import Reporter, seeded, state_diff

#: noise levels used for forward passes: from the smallest to the largest EDM sigma
SIGMAS: tuple[float, ...] = (0.002, 0.05, 1.0, 80.0)


@torch.no_grad()
def perturb_zero_parameters(module: nn.Module, scale: float = 0.1, seed: int = 0) -> list[str]:
    """Give every all-zero parameter small random values; return their names.

    Zero-initialised output layers (and adaLN-Zero gates) make the gradient of every layer before them
    exactly zero at initialisation; perturbing them lets a gradient-flow check see the whole network.
    """
    g = torch.Generator().manual_seed(seed)
    names = []
    for name, p in module.named_parameters():
        if p.numel() and not bool(p.ne(0).any()):
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
            names.append(name)
    return names


def check_parameter_gradients(rep: Reporter, module: nn.Module, what: str) -> None:
    none, bad, zero = [], [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            none.append(name)
        elif not bool(torch.isfinite(p.grad).all()):
            bad.append(name)
        elif not bool(p.grad.ne(0).any()):
            zero.append(name)
    rep.require(not none, f"{what}: parameters that receive no gradient (unused in forward?): {none[:10]}")
    rep.require(not bad, f"{what}: parameters with non-finite gradients: {bad[:10]}")
    rep.require(not zero, f"{what}: parameters whose gradient is exactly zero (after perturbing zero-initialised "
                          f"layers): {zero[:10]}")


def check_module_state(rep: Reporter, build: Callable[[], nn.Module], run: Callable[[nn.Module], Tensor],
                        what: str) -> None:
    """Same seed -> same tensors and output; a differently seeded copy loads the state and matches."""
    with seeded(0):
        a = build()
    with seeded(0):
        b = build()
    differ = state_diff(a.state_dict(), b.state_dict())
    rep.require(not differ, f"{what}: two builds under the same seed differ in {differ[:10]}")
    a.eval()
    b.eval()
    with torch.no_grad():
        out_a, out_b = run(a), run(b)
    rep.require(torch.equal(out_a, out_b), f"{what}: two builds under the same seed give different outputs")
    with seeded(1):
        c = build()
    try:
        c.load_state_dict(copy.deepcopy(a.state_dict()))
    except Exception as exc:
        rep.fail(f"{what}: load_state_dict(state_dict()) of a fresh build fails: {type(exc).__name__}: {exc}")
    c.eval()
    with torch.no_grad():
        out_c = run(c)
    rep.require(torch.allclose(out_a, out_c, rtol=1e-5, atol=1e-6),
                lambda: f"{what}: after load_state_dict a fresh build gives another output (max difference "
                        f"{(out_a - out_c).abs().max().item():.3g}): some state is not in state_dict")


def inputs(data_shape: Sequence[int], num_labels: int, batch_size: int, seed: int = 0
            ) -> tuple[Tensor, Tensor, Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *data_shape, generator=g)
    sigma = torch.tensor([SIGMAS[i % len(SIGMAS)] for i in range(batch_size)])
    labels = torch.randint(num_labels, (batch_size,), generator=g) if num_labels else None
    return x, sigma, labels


