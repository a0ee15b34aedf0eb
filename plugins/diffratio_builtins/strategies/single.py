"""One process, one device (CPU or one GPU)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import torch
from torch import Tensor, nn

from diffratio import Backbone, DiffRatioError, OptimizerConfig, Strategy, Trainable

#: what ``strategy.compile`` compiles: the whole network, or each backbone's repeated blocks on their own
CompileScope = Literal["model", "blocks"]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks the GPU when there is one; ``cuda`` without a GPU is an error, not a fallback."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DiffRatioError(f"strategy.device = {name!r} but no CUDA GPU is visible; use device = \"cpu\" "
                                 "or \"auto\"")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def make_optimizer(params: Any, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Fused Adam(W) on CPU and GPU: one kernel per step, and it can skip a step on the device (``found_inf``)."""
    kw: dict[str, Any] = {"lr": cfg.lr, "betas": cfg.betas, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    cls = torch.optim.AdamW if cfg.weight_decay > 0 else torch.optim.Adam
    return cls(params, fused=True, **kw)


def compile_blocks(module: nn.Module, **options: Any) -> None:
    """``torch.compile`` in place (``nn.Module.compile``: parameter names, state dicts and hooks stay as they
    are) each backbone's ``compile_regions()`` inside ``module`` (DiT: its transformer blocks, compiled once
    for all of them), the glue around them left eager; ``module`` as a whole when it holds no backbone.
    ``options`` go to ``torch.compile`` (e.g. ``backend``)."""
    regions = [r for m in module.modules() if isinstance(m, Backbone) for r in m.compile_regions()]
    for region in regions or [module]:
        region.compile(**options)


def compiled(module: nn.Module, config: Any, device: torch.device) -> nn.Module:
    """The module to run under a strategy's ``config.compile`` / ``compile_scope`` (GPUs only): ``module``
    itself (not compiled, or its blocks compiled in place), or a ``torch.compile`` wrapper of the whole of it
    (scope ``model``; parameter names of ``module`` are untouched either way)."""
    if not (config.compile and device.type == "cuda"):
        return module
    if config.compile_scope == "model":
        return torch.compile(module)
    compile_blocks(module)
    return module


class LocalTrainable(Trainable):
    """A module on one device with its Adam optimiser; optional gradient clipping; non-finite steps skipped."""

    def __init__(self, module: nn.Module, optim: OptimizerConfig, wrapped: nn.Module | None = None) -> None:
        self.raw = module
        self.module = wrapped if wrapped is not None else module
        self._forward_only = self.module
        self.optim = optim
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, optim)
        self.loss_finite: Tensor | None = None  # of the losses given to backward() since the last step()

    @property
    def forward_only(self) -> nn.Module:
        return self._forward_only

    def backward(self, loss: Tensor) -> None:
        finite = torch.isfinite(loss.detach())
        self.loss_finite = finite if self.loss_finite is None else self.loss_finite & finite
        loss.backward()

    def step(self) -> dict[str, Tensor]:
        """Clip and update unless the loss or a gradient is not finite, deciding on the device (no wait)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else torch.zeros(())
        ok = torch.isfinite(norm)
        if self.loss_finite is not None:
            ok = ok & self.loss_finite
        ok = self.agree(ok)
        if self.optim.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.optim.grad_clip, norm, foreach=True)
        # decided on the device: the fused optimiser leaves parameters and state alone when found_inf is 1
        self.optimizer.found_inf = (~ok).float()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_finite = None
        self.last_step_ok = ok
        return {"grad_norm": norm}

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def agree(self, ok: Tensor) -> Tensor:
        """The step's "finite" flag as all ranks see it (here: one process, the flag itself)."""
        return ok

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.raw.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Model and optimiser; a state without optimiser (the consolidated weights that a ``deepspeed``
        checkpoint's ``state.pt`` holds) loads the model only, which is what sampling needs."""
        self.raw.load_state_dict(state["model"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])


class SingleDevice(Strategy):
    """Everything on one device; bf16 autocast and TF32 on GPU when asked."""

    @attrs.frozen(kw_only=True)
    class Config:
        device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
        precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast of forward passes (GPU)
        tf32: bool = True  # allow TF32 matrix products on Ampere+ GPUs
        channels_last: bool = False  # memory format of 4-D image networks on GPU
        threads: int = 0  # CPU threads for torch (0 = torch's default)
        compile: bool = False  # torch.compile the networks on GPU (ignored on CPU); first steps slower
        compile_scope: CompileScope = "model"  # model: whole networks; blocks: each repeated block (faster to compile)

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise DiffRatioError(f"strategy 'single' in one of {os.environ['WORLD_SIZE']} launched processes "
                                 "(WORLD_SIZE): each would train alone into the same run directory; use "
                                 "strategy.name = \"ddp\" or \"deepspeed\" under torchrun")
        self._device = resolve_device(self.config.device)
        if self.config.threads > 0:
            torch.set_num_threads(self.config.threads)
        if self._device.type == "cuda":
            torch.cuda.set_device(self._device)
            torch.backends.cuda.matmul.allow_tf32 = self.config.tf32
            torch.backends.cudnn.allow_tf32 = self.config.tf32
            torch.backends.cudnn.benchmark = True

    @property
    def device(self) -> torch.device:
        return self._device

    def prepare(self, name: str, module: nn.Module, optim: OptimizerConfig) -> Trainable:
        module = module.to(self._device)
        if self.config.channels_last and self._device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)
        wrapped = compiled(module, self.config, self._device)
        return LocalTrainable(module, optim, wrapped if wrapped is not module else None)

    def prepare_frozen(self, module: nn.Module) -> nn.Module:
        return compiled(super().prepare_frozen(module), self.config, self._device)

    def autocast(self) -> Any:
        if self.config.precision == "bf16":
            return torch.autocast(self._device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
