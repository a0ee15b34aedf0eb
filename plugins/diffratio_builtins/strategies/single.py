"""One process, one device (CPU or one GPU), and ``LocalTrainable``, the model-with-Adam the ``ddp``
strategy builds on."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from diffratio import DiffRatioError, OptimizerConfig, Strategy, Trainable
from diffratio.config import setting
from diffratio.devices import resolve_device
from diffratio_builtins.strategies.common import (
    Settings,
    autocast,
    compiled,
    configure,
    make_optimizer,
    place,
)


def total_norm(grads: list[Tensor]) -> Tensor:
    """The 2-norm of ``grads`` taken as one vector, as ``torch.nn.utils.get_total_norm`` gives it for
    tensors of one device and dtype, without its per-tensor move to the first device: that is one dispatch
    per gradient, which an eager step bound by the host pays for. Mixed dtypes go to torch's own."""
    dtype = grads[0].dtype
    if any(g.dtype != dtype for g in grads):
        return torch.nn.utils.get_total_norm(grads, foreach=True)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class LocalTrainable(Trainable):
    """A module on one device with its fused Adam; optional gradient clipping; non-finite steps skipped.

    ``train`` and ``infer`` are the callables of ``forward`` and ``infer`` (the module itself by default):
    a strategy passes its DDP wrapper and its compiled module here.

    ``step`` computes the gradients' total norm in every step, clipping or not: one read-only pass over
    the gradients that is at once the non-finite detector (with the losses given to ``backward``), the
    clipping norm and the logged ``grad_norm``. Whether to update is decided on the device and handed to
    the fused Adam as ``found_inf``, which then leaves parameters and moments untouched; nothing in
    ``step`` waits for the device.
    """

    def __init__(self, module: nn.Module, optim: OptimizerConfig, *, train: Callable[..., Any] | None = None,
                 infer: Callable[..., Any] | None = None) -> None:
        self.model = module
        self.optim = optim
        self._train = train if train is not None else module
        self._infer = infer if infer is not None else module
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, optim)
        device = self.params[0].device if self.params else torch.device("cpu")
        self._zero = torch.zeros((), device=device)
        self.last_step_ok = torch.ones((), dtype=torch.bool, device=device)
        self._losses: list[Tensor] = []  # given to backward() since the last step()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._train(*args, **kwargs)

    def infer(self, *args: Any, **kwargs: Any) -> Any:
        return self._infer(*args, **kwargs)

    def backward(self, loss: Tensor) -> None:
        self._losses.append(loss.detach().reshape(-1))
        loss.backward()

    def step(self) -> dict[str, Tensor]:
        """Clip and update unless a loss or a gradient is not finite; ``grad_norm`` is the norm before clipping
        (not finite when the step was skipped for its gradients)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = total_norm(grads) if grads else self._zero
        if self._losses:
            ok = torch.isfinite(torch.cat([norm.reshape(1), *self._losses])).all()
            self._losses = []
        else:
            ok = torch.isfinite(norm)
        ok = self.agree(ok)
        if self.optim.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.optim.grad_clip, norm, foreach=True)
        self.optimizer.found_inf = (~ok).float()  # the fused Adam skips its update where this is 1
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_step_ok = ok
        return {"grad_norm": norm}

    def agree(self, ok: Tensor) -> Tensor:
        """The step's "finite" flag as all ranks see it (here: one process, the flag itself)."""
        return ok

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Model and optimiser; a state without optimiser (the consolidated weights that a ``deepspeed``
        checkpoint's ``state.pt`` holds) loads the model only, which is what sampling needs."""
        self.model.load_state_dict(state["model"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])


class SingleDevice(Strategy):
    """Everything on one device; bf16 autocast and TF32 on GPU when asked."""

    @attrs.frozen(kw_only=True)
    class Config(Settings):
        device: str = setting("auto", "auto (the GPU when there is one, else the CPU), cpu, cuda, cuda:1, ...")

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise DiffRatioError(f"strategy 'single' in one of {os.environ['WORLD_SIZE']} launched processes "
                                 "(WORLD_SIZE): each would train alone into the same run directory; use "
                                 "strategy.name = \"ddp\" or \"deepspeed\" under torchrun")
        self._device = resolve_device(self.config.device)
        configure(self.config, self._device)

    @property
    def device(self) -> torch.device:
        return self._device

    def prepare(self, name: str, module: nn.Module, optim: OptimizerConfig) -> Trainable:
        """``module`` on the device; its training and inference passes both run the compiled module where the
        strategy compiles."""
        module = place(module, self.config, self._device)
        run = compiled(module, self.config, self._device)
        return LocalTrainable(module, optim, train=run, infer=run)

    def prepare_frozen(self, module: nn.Module) -> nn.Module:
        return compiled(super().prepare_frozen(module), self.config, self._device)

    def autocast(self) -> AbstractContextManager[Any]:
        return autocast(self.config, self._device)
