"""The trained-model wrapper of the built-in strategies: one handle per purpose (``model``, ``forward``,
``infer``), inference through the compiled module, non-finite steps skipped without a host wait, the shared
settings table and the device rule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import pytest
import torch
from torch import nn

from diffratio import DiffRatioError, OptimizerConfig
from diffratio.devices import resolve_device
from diffratio_builtins.strategies import common, ddp, single
from diffratio_builtins.strategies import deepspeed as deepspeed_strategy
from diffratio_builtins.strategies.ddp import DDP
from diffratio_builtins.strategies.single import LocalTrainable, SingleDevice


class Counted(nn.Module):
    """What the fake ``torch.compile`` returns for a module: runs it and counts the calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._orig_mod(*args, **kwargs)


@pytest.fixture
def fake_compile(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Compiling on: ``torch.compile`` returns a call-counting wrapper of a module, or of a module's call for
    ``nn.Module.compile`` (anything else is returned as it is), and the strategies compile on the CPU.
    Returns the wrappers made."""
    made: list[Any] = []

    def compile_(target: Any = None, **options: Any) -> Any:
        if isinstance(target, nn.Module):
            wrapper: Any = Counted(target)
        elif not isinstance(getattr(target, "__self__", None), nn.Module):  # not a model: e.g. a library's helper
            return target if target is not None else (lambda fn: fn)
        else:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                wrapper.calls += 1
                return target(*args, **kwargs)
            wrapper.calls = 0
        made.append(wrapper)
        return wrapper

    monkeypatch.setattr(torch, "compile", compile_)
    # every strategy module that imported ``compiles`` holds its own binding of it (DeepSpeed's does)
    for module in (common, single, ddp, deepspeed_strategy):
        if hasattr(module, "compiles"):
            monkeypatch.setattr(module, "compiles", lambda settings, device: settings.compile)
    return made


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 2))


@pytest.mark.parametrize("scope", ["model", "blocks"])
def test_infer_runs_the_compiled_module_like_forward(fake_compile: list[Any], scope: str) -> None:
    """``infer`` and ``forward`` run the same compiled object: the ``torch.compile`` wrapper of the whole model
    (scope ``model``) or the model with its regions compiled in place (``blocks``); ``model`` stays the plain
    module either way."""
    strategy = SingleDevice(SingleDevice.Config(device="cpu", compile=True, compile_scope=scope))
    module = net()
    t = strategy.prepare("net", module, OptimizerConfig())
    assert t.model is module and not isinstance(t.model, Counted)
    [compiled] = fake_compile
    x = torch.randn(4, 3)
    with torch.no_grad():
        y = t.infer(x)
    assert compiled.calls == 1, "infer ran the eager module"
    torch.testing.assert_close(y, module(x))
    assert compiled.calls == (1 if scope == "model" else 2)  # the plain call of a block-compiled module compiles too
    before = compiled.calls
    t.forward(x).sum().backward()
    assert compiled.calls == before + 1 and all(p.grad is not None for p in module.parameters())


def test_without_compile_every_handle_is_the_plain_module(fake_compile: list[Any]) -> None:
    t = SingleDevice(SingleDevice.Config(device="cpu")).prepare("net", net(), OptimizerConfig())
    x = torch.randn(4, 3)
    torch.testing.assert_close(t.infer(x), t.model(x))
    torch.testing.assert_close(t.forward(x), t.model(x))
    assert fake_compile == []


def test_ddp_infer_is_the_compiled_module_outside_the_ddp_wrapper(fake_compile: list[Any],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """DDP (one gloo process): ``forward`` goes through DistributedDataParallel around the compiled module,
    ``infer`` runs the compiled module itself, never the gradient-synchronising wrapper."""
    from torch.nn.parallel import DistributedDataParallel

    ddp_calls = []
    original = DistributedDataParallel.forward

    def counting(self: DistributedDataParallel, *args: Any, **kwargs: Any) -> Any:
        ddp_calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DistributedDataParallel, "forward", counting)
    strategy = DDP(DDP.Config(device="cpu", compile=True))
    try:
        module = net()
        t = strategy.prepare("net", module, OptimizerConfig())
        [compiled] = fake_compile
        x = torch.randn(4, 3)
        with torch.no_grad():
            t.infer(x)
        assert compiled.calls == 1 and ddp_calls == []
        t.backward(t.forward(x).square().mean())
        t.step()
        assert compiled.calls == 2 and ddp_calls == [1] and bool(t.last_step_ok)
        assert t.model is module
    finally:
        strategy.close()


@pytest.mark.parametrize("scope", ["model", "blocks"])
def test_deepspeed_infer_runs_the_module_compiled_in_place(fake_compile: list[Any], scope: str) -> None:
    """DeepSpeed compiles the module inside its engine in place: ``infer`` (and ``model``) run the compiled
    call without the engine, ``forward`` runs the engine around it."""
    pytest.importorskip("deepspeed", reason="pip install 'diffratio[deepspeed]'")
    from diffratio_builtins.strategies.deepspeed import DeepSpeed

    strategy = DeepSpeed(DeepSpeed.Config(device="cpu", compile=True, compile_scope=scope))
    try:
        t = strategy.prepare(f"net-{scope}", net(), OptimizerConfig())
        [compiled] = fake_compile
        engine_calls = []
        engine_forward = t.engine.forward
        t.engine.forward = lambda *a, **k: engine_calls.append(1) or engine_forward(*a, **k)
        x = torch.randn(4, 3)
        with torch.no_grad():
            t.infer(x)
        assert compiled.calls == 1 and engine_calls == [], "infer ran the eager module or the engine"
        t.backward(t.forward(x).square().mean())
        t.step()
        assert compiled.calls == 2 and engine_calls == [1] and bool(t.last_step_ok) and t.model is t.engine.module
    finally:
        strategy.close()


# --------------------------------------------------------------------------------------------------
# non-finite steps, decided on the device
# --------------------------------------------------------------------------------------------------


@contextmanager
def no_host_sync(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Reading a tensor's value on the host (what waits for a GPU) raises inside the block."""

    def refuse(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a tensor was read on the host inside Trainable.step")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy"):
            m.setattr(torch.Tensor, name, refuse)
        yield


def snapshot(t: LocalTrainable) -> list[torch.Tensor]:
    state = [s.clone() for st in t.optimizer.state.values() for s in st.values()]
    return [p.detach().clone() for p in t.model.parameters()] + state


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_nonfinite_steps_are_skipped_without_reading_the_device(clip: float,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-finite loss, a non-finite gradient, or a non-finite loss with finite gradients: parameters and
    Adam's state stay as they were and ``last_step_ok`` turns false; finite steps update. ``step`` never
    reads a tensor on the host (patched to raise), with or without clipping."""
    t = LocalTrainable(net(), OptimizerConfig(lr=0.1, betas=(0.9, 0.99), grad_clip=clip))
    x = torch.randn(8, 3)

    def step(make_loss: Callable[[], torch.Tensor], poison_grad: bool = False) -> dict[str, torch.Tensor]:
        t.backward(make_loss())
        if poison_grad:
            t.model[0].weight.grad[0, 0] = math.inf
        with no_host_sync(monkeypatch):
            return t.step()

    out = step(lambda: t.forward(x).square().mean())
    assert isinstance(t.last_step_ok, torch.Tensor) and t.last_step_ok.dtype == torch.bool and t.last_step_ok.ndim == 0
    assert bool(t.last_step_ok) and float(out["grad_norm"]) > 0
    cases = [(lambda: t.forward(x).square().mean() * math.nan, False),  # non-finite loss and gradients
             (lambda: t.forward(x).square().mean(), True),  # one infinite gradient
             (lambda: t.forward(x).square().mean() + torch.tensor(math.inf), False)]  # finite gradients
    for (make_loss, poison), norm_finite in zip(cases, (False, False, True), strict=True):
        before = snapshot(t)
        out = step(make_loss, poison)
        assert not bool(t.last_step_ok) and math.isfinite(float(out["grad_norm"])) is norm_finite
        assert same(before, snapshot(t)), "a non-finite step changed the parameters or Adam's state"
        assert all(p.grad is None for p in t.model.parameters())
    before = snapshot(t)
    step(lambda: t.forward(x).square().mean())
    assert bool(t.last_step_ok) and not same(before, snapshot(t))


def test_the_skipped_step_leaves_adams_step_count() -> None:
    """Adam's step counter (its bias correction) does not advance on a skipped step, so a run that skipped
    one continues like a run that never saw it."""
    a, b = (LocalTrainable(net(), OptimizerConfig(lr=0.1, betas=(0.9, 0.99))) for _ in range(2))
    x = torch.randn(8, 3)
    a.backward(a.forward(x).square().mean() * math.nan)
    a.step()
    for t in (a, b):
        for _ in range(3):
            t.backward(t.forward(x).square().mean())
            t.step()
    assert same(snapshot(a), snapshot(b))


# --------------------------------------------------------------------------------------------------
# one settings table, one device rule
# --------------------------------------------------------------------------------------------------


def test_the_strategies_share_one_settings_table() -> None:
    from diffratio_builtins.strategies.deepspeed import DeepSpeed

    shared = {f.name for f in attrs.fields(common.Settings)}
    assert {"precision", "channels_last", "tf32", "threads", "compile", "compile_scope"} <= shared
    for cls in (SingleDevice.Config, DDP.Config, DeepSpeed.Config):
        assert issubclass(cls, common.Settings) and shared <= {f.name for f in attrs.fields(cls)}
        assert cls().channels_last is False
        assert all(f.metadata.get("doc") for f in attrs.fields(cls)), cls
    assert issubclass(DDP.Config, common.ProcessGroupSettings) and issubclass(DeepSpeed.Config,
                                                                              common.ProcessGroupSettings)


def test_device_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device(torch.device("cpu"))
    with pytest.raises(DiffRatioError, match="no CUDA GPU is visible"):
        resolve_device("cuda")
    with pytest.raises(DiffRatioError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DiffRatioError, match="LOCAL_RANK 2 but only 2 GPU"):
        resolve_device("auto", local_rank=2)


def test_total_norm_is_torchs_without_a_move_per_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    grads = [torch.randn(7, 3) for _ in range(40)] + [torch.tensor([float("inf")])]
    expected = [torch.nn.utils.get_total_norm(grads[:40], foreach=True),
                torch.nn.utils.get_total_norm(grads, foreach=True)]
    mixed = [*grads[:40], torch.randn(3, dtype=torch.float64)]
    expected_mixed = torch.nn.utils.get_total_norm(mixed, foreach=True)

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a gradient was moved or cast one tensor at a time")

    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "to", refuse)
        got = [single.total_norm(grads[:40]), single.total_norm(grads)]
    assert torch.equal(got[0], expected[0]) and got[0].dtype == expected[0].dtype
    assert torch.isinf(got[1]) and torch.isinf(expected[1])
    assert torch.equal(single.total_norm(mixed), expected_mixed)  # mixed dtypes: torch's own
