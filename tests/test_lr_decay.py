"""The learning-rate decay of ``OptimizerConfig`` (``lr_decay``, ``lr_decay_start``, ``lr_final``): its
values at chosen steps, and that a trainable's optimiser takes them (``schedule_lr``)."""

from __future__ import annotations

import math

import pytest
import torch

from diffratio import DiffRatioError, OptimizerConfig, Trainable
from diffratio_builtins.strategies.single import LocalTrainable


@pytest.mark.parametrize(("decay", "start", "final", "expected"), [
    # 11 steps (0..10): the decay runs from step start * 11 to the last step, 10
    ("cosine", 0.0, 0.0, {0: 1.0, 5: 0.5, 10: 0.0, 12: 0.0}),
    ("cosine", 0.0, 0.2, {0: 1.0, 5: 0.6, 10: 0.2}),
    ("linear", 0.0, 0.0, {0: 1.0, 1: 0.9, 5: 0.5, 10: 0.0}),
    ("linear", 0.5, 0.1, {0: 1.0, 5: 1.0, 6: 0.9, 8: 0.5, 10: 0.1, 11: 0.1}),  # 5.5 -> 10: (step - 5.5) / 4.5
    ("cosine", 0.5, 0.0, {4: 1.0, 5: 1.0, 10: 0.0}),
    ("none", 0.5, 0.1, {0: 1.0, 10: 1.0, 11: 1.0}),
])
def test_lr_at_follows_the_schedule(decay: str, start: float, final: float, expected: dict[int, float]) -> None:
    cfg = OptimizerConfig(lr=2.0, lr_decay=decay, lr_decay_start=start, lr_final=final)
    got = {step: cfg.lr_at(step, 11) / 2.0 for step in expected}
    assert got == pytest.approx(expected, abs=1e-12)


def test_cosine_is_a_half_cosine_between_start_and_last_step() -> None:
    cfg = OptimizerConfig(lr=1.0, lr_decay="cosine", lr_decay_start=0.3, lr_final=0.1)
    total, start = 3000, 900.0
    for step in (900, 1000, 1950, 2500, 2999):
        t = (step - start) / (total - 1 - start)
        assert cfg.lr_at(step, total) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))
    lrs = [cfg.lr_at(s, total) for s in range(total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))  # never rises


def test_schedule_lr_reaches_the_optimiser_and_none_leaves_it_alone() -> None:
    net = torch.nn.Linear(3, 2)
    t = LocalTrainable(net, OptimizerConfig(lr=0.1, lr_decay="linear"))
    assert t.schedule_lr(5, 11) == pytest.approx(0.05)
    assert [g["lr"] for g in t.optimizer.param_groups] == [pytest.approx(0.05)]
    plain = LocalTrainable(torch.nn.Linear(3, 2), OptimizerConfig(lr=0.1))
    assert plain.schedule_lr(5, 11) is None
    assert [g["lr"] for g in plain.optimizer.param_groups] == [0.1]


def test_a_trainable_without_its_optimizer_config_fails_clearly() -> None:
    class Old(Trainable):  # a third-party strategy's Trainable that does not keep ``optim``
        def backward(self, loss: torch.Tensor) -> None: ...
        def step(self) -> dict: return {}
        def state_dict(self) -> dict: return {}
        def load_state_dict(self, state: dict) -> None: ...

    with pytest.raises(DiffRatioError, match="Strategy.prepare must keep the OptimizerConfig"):
        Old().schedule_lr(0, 10)
