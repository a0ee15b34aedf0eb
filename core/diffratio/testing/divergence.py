"""Conformance of divergences."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from diffratio.components import Divergence
from diffratio.testing._shared import Reporter, check_config, check_stored_config, names_component

#: logits where a divergence's weight must equal r^2 F''(r) (inside every built-in clamp)
F_VALUES: tuple[float, ...] = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)


@names_component("divergence")
def check_divergence(cls: type, config: Any = None, *, f_values: Sequence[float] = F_VALUES,
                     f_range: tuple[float, float] = (-20.0, 20.0), rtol: float = 1e-4) -> None:
    """``weight(f) = r^2 F''(r)`` (autograd, float64) at ``f_values``, ``F(1) = 0``, weights elementwise,
    finite and non-negative on ``f_range``. ``f_values`` must avoid where the weight is clamped."""
    rep = Reporter("divergence", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, Divergence), "must derive from diffratio.Divergence")
    config = check_config(cls, config, kind="divergence")
    div = cls(config)
    check_stored_config(rep, div, config)

    f = torch.linspace(f_range[0], f_range[1], 161)
    h = div.weight(f)
    rep.shape(h, f.shape, "weight(f) of a (161,) tensor")
    rep.require(h.is_floating_point(), f"weight(f) must be a float tensor, got {h.dtype}")
    rep.finite(h, f"weight(f) for f in [{f_range[0]}, {f_range[1]}]")
    rep.require(bool((h >= 0).all()), lambda: f"weight(f) is negative at f = {f[h < 0][:5].tolist()}: h = r^2 F''(r) "
                                             "of a convex F is never negative")
    h2 = div.weight(f.reshape(7, 23))
    rep.require(tuple(h2.shape) == (7, 23) and torch.allclose(h2.reshape(-1), h),
                "weight must act elementwise (a (7, 23) input gives the same values in the same shape)")
    rep.require(torch.equal(div.weight(f), h), "weight(f) is not deterministic")

    one = torch.ones(1, dtype=torch.float64)
    F1 = float(div.F(one))
    rep.require(abs(F1) < 1e-9, f"F(1) = {F1}, must be 0 (an f-divergence of a distribution from itself is 0)")

    fs = torch.tensor(list(f_values), dtype=torch.float64)
    r = torch.exp(-fs).requires_grad_(True)
    Fr = div.F(r)
    rep.shape(Fr, r.shape, "F(r)")
    (dF,) = torch.autograd.grad(Fr.sum(), r, create_graph=True)
    (d2F,) = torch.autograd.grad(dF.sum(), r)
    expected = (r.detach() ** 2 * d2F).double()
    got = div.weight(fs).double()
    close = (got - expected).abs() <= 1e-8 + rtol * expected.abs()
    rep.require(bool(close.all()), lambda: "weight(f) differs from r^2 F''(r), r = exp(-f):" + "".join(
        f"\n  f = {fv:+.2f}: weight {g:.6g}, r^2 F''(r) {e:.6g}"
        for fv, g, e, ok in zip(fs.tolist(), got.tolist(), expected.tolist(), close.tolist(), strict=True) if not ok))


