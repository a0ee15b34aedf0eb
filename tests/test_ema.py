"""The EMA update reads nothing on the host: a skipped step is folded into its weight on the device; the
EMA update and the freeze list a module's tensors once, not at every step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffratio_builtins.methods.common import _lerp_by_tensor, frozen, update_ema


def test_device_weight_is_never_read_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    ema = [torch.empty(5, 3, device="meta") for _ in range(70)]
    src = [torch.empty(5, 3, device="meta") for _ in range(70)]

    def refuse(*_: object) -> None:
        raise AssertionError("the EMA weight was read on the host")

    monkeypatch.setattr(torch.Tensor, "item", refuse)
    monkeypatch.setattr(torch.Tensor, "__float__", refuse)
    _lerp_by_tensor(ema, src, torch.empty((), device="meta"))


@pytest.mark.parametrize("applied", [True, False])
def test_a_skipped_step_leaves_the_ema_alone(applied: bool) -> None:
    torch.manual_seed(0)
    model, ema = nn.Linear(4, 3), nn.Linear(4, 3)
    before = [p.detach().clone() for p in ema.parameters()]
    update_ema(ema, model, 0.9, step=100, warmup="none", applied=torch.tensor(applied))
    for p, b, m in zip(ema.parameters(), before, model.parameters(), strict=True):
        expected = torch.lerp(b, m.detach(), 0.1) if applied else b
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7)


@pytest.mark.gpu
def test_device_path_matches_lerp_on_the_gpu() -> None:
    ema = [torch.randn(64, 9, device="cuda") for _ in range(40)]
    src = [torch.randn(64, 9, device="cuda") for _ in range(40)]
    ref = [e.clone() for e in ema]
    torch._foreach_lerp_(ref, src, 0.01)
    _lerp_by_tensor(ema, src, torch.tensor(0.01, device="cuda"))
    for a, b in zip(ema, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_a_narrower_source_is_cast_into_the_fp32_ema() -> None:
    torch.manual_seed(0)
    model, ema = nn.Linear(4, 3).to(torch.bfloat16), nn.Linear(4, 3)
    before = [p.detach().clone() for p in ema.parameters()]
    update_ema(ema, model, 0.9, step=100, warmup="none", applied=True)
    for p, b, m in zip(ema.parameters(), before, model.parameters(), strict=True):
        assert p.dtype == torch.float32
        torch.testing.assert_close(p.detach(), torch.lerp(b, m.detach().float(), 0.1), rtol=0, atol=1e-7)


def test_later_updates_and_freezes_walk_no_module_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model, ema = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    update_ema(ema, model, 0.9, step=100, warmup="none")
    with frozen(model):
        pass

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a module tree was walked again")

    monkeypatch.setattr(nn.Module, "named_modules", refuse)
    model.load_state_dict({k: v + 1 for k, v in model.state_dict().items()})  # in place: the lists stay valid
    with frozen(model):
        assert not any(p.requires_grad for p in model[0]._parameters.values())
    assert all(p.requires_grad for p in model[0]._parameters.values())
    before = [p.detach().clone() for p in ema[0]._parameters.values()]
    update_ema(ema, model, 0.9, step=100, warmup="none", applied=torch.tensor(True))
    for p, b, m in zip(ema[0]._parameters.values(), before, model[0]._parameters.values(), strict=True):
        torch.testing.assert_close(p.detach(), torch.lerp(b, m.detach(), 0.1), rtol=0, atol=1e-7)
    torch.testing.assert_close(ema[1].running_mean, model[1].running_mean, rtol=0, atol=0)
