"""Pieces shared by the built-in methods: EMA, freezing a network, initialisation from pretraining."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from diffratio import DiffRatioError, Trainable, gathered, plain_copy
from diffratio.inference import load_pretrained_denoiser

if TYPE_CHECKING:
    from diffratio.registry import Registry


def make_ema(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` to hold the exponential moving average of its weights: a full, plain
    copy on every rank, also where a strategy partitions or hooks ``module`` (DeepSpeed); in fp32 where the
    strategy holds the weights in a narrower type (DeepSpeed ``bf16-weights``), so that the average keeps
    small updates and checkpoints and samplers see fp32."""
    ema = plain_copy(module).eval()
    ema.requires_grad_(False)
    for p in ema.parameters():
        if p.is_floating_point() and torch.finfo(p.dtype).bits < 32:
            p.data = p.data.float()
    return ema


#: how the EMA decay warms up (the ``ema_warmup`` option of the methods)
EmaWarmup = Literal["ramp", "average", "none"]


def ema_decay_at(decay: float, step: int, warmup: EmaWarmup = "ramp") -> float:
    """The EMA decay at update ``step`` (0-based) under a warm-up that keeps early averages from holding
    ``decay ** step`` of the initialisation (13% after 2000 steps at 0.999):

    - ``ramp``: ``min(decay, (1 + step) / (10 + step))``, a window of about a ninth of the steps so far; it
      reaches 0.999 only at step 8,990, so short runs average over few steps.
    - ``average``: ``min(decay, step / (1 + step))``, the plain average of all weights so far until that
      window is ``1 / (1 - decay)`` steps long (step 999 at 0.999), then the EMA: a longer average, which
      also keeps early weights longer.
    - ``none``: ``decay`` from the first step.
    """
    if warmup == "ramp":
        return min(decay, (1 + step) / (10 + step))
    if warmup == "average":
        return min(decay, step / (1 + step))
    return decay


@torch.no_grad()
def update_ema(ema: nn.Module, module: nn.Module, decay: float, step: int, warmup: EmaWarmup = "ramp",
               applied: Tensor | bool = True) -> None:
    """``ema = d * ema + (1 - d) * module`` for parameters with ``d = ema_decay_at(decay, step, warmup)``;
    buffers are copied. ``applied`` (a trainable's ``last_step_ok``) false leaves the EMA as it is; as a
    device tensor it scales the step on the device, so the host never waits for it. A source in another
    dtype than the EMA (bf16 weights into the fp32 EMA) is cast to the EMA's dtype first."""
    d = ema_decay_at(decay, step, warmup)
    if applied is False:
        return
    (ema_p, ema_b), (params, buffers) = listed(ema), listed(module)
    with gathered(params):  # where DeepSpeed ZeRO-3 partitions them
        # under no_grad the parameters themselves are the sources; a cast only where the dtypes differ (each
        # call is one dispatch per tensor, which an eager step bound by the host pays for)
        src_p = [p if p.dtype == e.dtype else p.to(e.dtype) for p, e in zip(params, ema_p, strict=True)]
        if isinstance(applied, Tensor):
            weight = applied.to(device=ema_p[0].device, dtype=ema_p[0].dtype) * (1.0 - d)
            _lerp_by_tensor(ema_p, src_p, weight)
            for b_ema, b in zip(ema_b, buffers, strict=True):
                b_ema.copy_(torch.where(applied.to(b.device), b, b_ema))
        else:
            torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
            for b_ema, b in zip(ema_b, buffers, strict=True):
                b_ema.copy_(b)


#: each module's parameters and buffers, listed once (see ``listed``); an entry goes with its module
_LISTED: weakref.WeakKeyDictionary[nn.Module, tuple[list[nn.Parameter], list[Tensor]]] = (
    weakref.WeakKeyDictionary())


def listed(module: nn.Module) -> tuple[list[nn.Parameter], list[Tensor]]:
    """``module``'s parameters and buffers, listed at the first call and kept for later ones. Walking a
    module tree costs a Python call per submodule and tensor, which an eager step bound by the host would
    pay at every EMA update and freeze; training changes these tensors in place (optimiser steps, loaded
    checkpoints, DeepSpeed's gathering) and never which tensors a module holds."""
    if (entry := _LISTED.get(module)) is None:
        entry = _LISTED[module] = (list(module.parameters()), list(module.buffers()))
    return entry


def _lerp_by_tensor(ema: list[Tensor], src: list[Tensor], weight: Tensor, chunk: int = 32) -> None:
    """``ema += weight * (src - ema)`` for a 0-d ``weight`` on the device, without reading it on the host: a
    fused lerp takes its weight as a number, which a GPU tensor would have to be synchronised for. The
    difference is formed ``chunk`` tensors at a time, so the temporary memory stays a fraction of the model.
    On the CPU nothing waits, and the fused lerp is used."""
    if weight.device.type == "cpu":
        torch._foreach_lerp_(ema, src, weight.item())
        return
    for i in range(0, len(ema), chunk):
        delta = torch._foreach_sub(src[i:i + chunk], ema[i:i + chunk])
        torch._foreach_mul_(delta, weight)
        torch._foreach_add_(ema[i:i + chunk], delta)


def scheduled_lrs(step: int, total: int, device: torch.device, **trainables: Trainable) -> dict[str, Tensor]:
    """Set each trained model's learning rate for update ``step`` of ``total`` (its optimiser config's
    ``lr_decay``); return ``{"<name>/lr": lr}`` (0-d tensors on ``device``, filled there without a copy from
    the host) for those that decay, to be logged."""
    lrs = {name: t.schedule_lr(step, total) for name, t in trainables.items()}
    return {f"{name}/lr": torch.full((), lr, device=device) for name, lr in lrs.items() if lr is not None}


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Parameters stop collecting gradients inside the block; gradients still flow through the inputs."""
    params = listed(module)[0]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


def load_denoiser_weights(path: str, denoiser: nn.Module, what: str, registry: Registry | None = None) -> None:
    """Load the denoiser a pretraining run offers into ``denoiser``; name any mismatched tensors."""
    state = load_pretrained_denoiser(path, registry)
    own = denoiser.state_dict()
    problems = [f"missing in checkpoint: {k}" for k in own if k not in state]
    problems += [f"unexpected in checkpoint: {k}" for k in state if k not in own]
    problems += [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in own.items() if k in state and state[k].shape != v.shape]
    if problems:
        raise DiffRatioError(f"cannot initialise the {what} from {path}: the pretrained network differs "
                             "(use the same [backbone] settings as the pretraining recipe):\n  "
                             + "\n  ".join(problems[:20]))
    denoiser.load_state_dict(state)
