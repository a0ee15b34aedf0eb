"""Conformance of strategies."""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffratio.components import Strategy
from diffratio.testing._shared import Reporter, check_config, check_stored_config, names_component, seeded, state_diff
from diffratio.trainable import OptimizerConfig, Trainable
from diffratio.zero import full_parameters


@names_component("strategy")
def check_strategy(cls: type, config: Any = None) -> None:
    """A prepared model trains; a step with a non-finite loss changes nothing and sets ``last_step_ok``
    false; the Trainable's state dict restores model and optimiser exactly."""
    rep = Reporter("strategy", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, Strategy), "must derive from diffratio.Strategy")
    config = check_config(cls, config, kind="strategy")
    strat = cls(config)
    check_stored_config(rep, strat, config)
    dev = strat.device
    rep.require(isinstance(dev, torch.device), f"device must be a torch.device, got {dev!r}")
    rep.require(0 <= strat.rank < strat.world_size, f"rank {strat.rank} outside world size {strat.world_size}")
    rep.require(strat.is_main == (strat.rank == 0), "is_main must be rank == 0")
    optim = OptimizerConfig(lr=0.05, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=g).to(dev)

    def prepare(name: str, optim: OptimizerConfig = optim) -> Trainable:
        with seeded(0):
            return strat.prepare(name, nn.Linear(3, 2), optim)

    def weights(t: Trainable) -> dict[str, Tensor]:
        with full_parameters(t.model):  # gathered where the strategy partitions them (ZeRO-3)
            return {k: v.detach().clone() for k, v in t.model.state_dict().items()}

    def train(t: Trainable) -> dict[str, Any]:
        with strat.autocast():
            loss = t.forward(x).float().pow(2).mean()
        t.backward(loss)
        return t.step()

    a = prepare("conformance-a")
    rep.require(isinstance(a, Trainable), f"prepare must return a diffratio.Trainable, got {type(a).__name__}")
    before = weights(a)
    out = train(a)
    rep.require(isinstance(out, dict), f"Trainable.step must return a dict of diagnostics, got {type(out).__name__}")
    rep.require(bool(state_diff(before, weights(a))), "a training step did not change the parameters")
    leftover = [n for n, p in a.model.named_parameters() if p.grad is not None and bool(p.grad.ne(0).any())]
    rep.require(not leftover, f"Trainable.step must zero the gradients; still set: {leftover}")
    rep.require(bool(a.last_step_ok), "last_step_ok must be true after a step with finite loss and gradients")
    state = copy.deepcopy(a.state_dict())
    folder = Path(strat.broadcast_object(tempfile.mkdtemp(prefix="diffratio-strategy-") if strat.is_main else None))
    a.save_files(folder / "a")  # state kept outside the state dict (DeepSpeed's own checkpoint)
    b = prepare("conformance-b")
    b.load_state_dict(state)
    b.load_files(folder / "a")
    rep.require(not state_diff(weights(a), weights(b)), "load_state_dict did not restore the model")
    # a step whose loss is not finite is skipped: no update, last_step_ok false, optimiser state untouched
    before = weights(a)
    with strat.autocast():
        loss = a.forward(x).float().pow(2).mean() * float("nan")
    a.backward(loss)
    a.step()
    rep.require(not state_diff(before, weights(a)), "a step with a non-finite loss changed the parameters "
                "(Trainable.step must skip it)")
    rep.require(not bool(a.last_step_ok), "last_step_ok must be false after a step with a non-finite loss")
    train(a)
    train(b)
    rep.require(not state_diff(weights(a), weights(b)),
                "after load_state_dict (and a skipped step) the next step differs: the optimiser state is not "
                "restored, or the skipped step changed it")
    # the learning-rate decay reaches the optimiser: lr_final = 0 at the last step leaves the weights alone
    c = prepare("conformance-lr", OptimizerConfig(lr=0.05, betas=(0.9, 0.99), lr_decay="linear"))
    rep.require(c.schedule_lr(9, 10) == 0.0, "schedule_lr(last step) must return lr * lr_final = 0")
    before = weights(c)
    train(c)
    rep.require(not state_diff(before, weights(c)), "a step at learning rate 0 changed the parameters: "
                "Trainable.set_lr does not reach the optimiser")
    rep.require(c.schedule_lr(0, 10) == optim.lr, "schedule_lr(0) must return the configured lr")
    train(c)
    rep.require(bool(state_diff(before, weights(c))), "a step after schedule_lr(0) did not train")
    reduced = strat.all_reduce_mean({"value": 1.5})
    rep.require(set(reduced) == {"value"} and math.isfinite(reduced["value"]), "all_reduce_mean changed the keys")
    if strat.world_size == 1:
        rep.require(reduced["value"] == 1.5, "all_reduce_mean on one process must be the identity")
    strat.barrier()
    if strat.is_main:
        shutil.rmtree(folder, ignore_errors=True)


