"""What the built-in strategies share: their settings table, device setup, compilation and the optimiser."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Any, Literal

import attrs
import torch
from torch import nn

from diffratio import Backbone, OptimizerConfig
from diffratio.config import setting

#: what ``strategy.compile`` compiles: the whole network, or each backbone's repeated blocks on their own
CompileScope = Literal["model", "blocks"]


@attrs.frozen(kw_only=True)
class Settings:
    """The settings every built-in strategy has (``single``, ``ddp`` and ``deepspeed`` extend this table)."""

    precision: Literal["fp32", "bf16"] = setting("fp32", "bf16 = autocast of forward passes; weights and Adam in fp32")
    channels_last: bool = setting(False, "channels-last memory format for 4-D image networks on GPU; helps "
                                  "convolution-heavy networks under bf16 without GroupNorm, slows GroupNorm U-Nets "
                                  "in eager mode")
    tf32: bool = setting(True, "allow TF32 matrix products on Ampere+ GPUs")
    threads: int = setting(0, "CPU threads for torch per process (0 = torch's default)", ge=0)
    compile: bool = setting(False, "torch.compile the networks on GPU (ignored on CPU); first steps slower")
    compile_scope: CompileScope = setting("model", "model: whole networks; blocks: each repeated block (faster to "
                                          "compile)")


@attrs.frozen(kw_only=True)
class ProcessGroupSettings(Settings):
    """``Settings`` of the strategies that run one process per device (``ddp``, ``deepspeed``)."""

    device: Literal["auto", "cpu", "cuda"] = setting("auto", "auto: the GPU of LOCAL_RANK when there are GPUs, "
                                                     "else the CPU")
    backend: Literal["auto", "nccl", "gloo"] = setting("auto", "collectives: auto = nccl on GPUs, gloo on CPU")
    timeout_minutes: float = setting(30.0, "how long a rank waits for the others in a collective (rank 0 evaluates "
                                     "while they wait)", gt=0)


def configure(settings: Settings, device: torch.device) -> None:
    """Apply the process-wide settings: CPU threads; on a GPU, make it current, TF32 and cuDNN autotuning."""
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = settings.tf32
        torch.backends.cudnn.allow_tf32 = settings.tf32
        torch.backends.cudnn.benchmark = True


def place(module: nn.Module, settings: Settings, device: torch.device) -> nn.Module:
    """``module`` on ``device``, in channels-last memory format where ``settings.channels_last`` asks for it."""
    module = module.to(device)
    if settings.channels_last and device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    return module


def autocast(settings: Settings, device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on ``device`` under ``precision = "bf16"``, else nothing."""
    if settings.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compiles(settings: Settings, device: torch.device) -> bool:
    """Whether the strategy compiles its networks: ``compile`` set and a GPU (compiling brings no speed on CPU)."""
    return settings.compile and device.type == "cuda"


def compile_blocks(module: nn.Module, **options: Any) -> None:
    """``torch.compile`` in place (``nn.Module.compile``: parameter names, state dicts and hooks stay as they
    are) each backbone's ``compile_regions()`` inside ``module`` (DiT: its transformer blocks, compiled once
    for all of them), the glue around them left eager; ``module`` as a whole when it holds no backbone.
    ``options`` go to ``torch.compile`` (e.g. ``backend``)."""
    regions = [r for m in module.modules() if isinstance(m, Backbone) for r in m.compile_regions()]
    for region in regions or [module]:
        region.compile(**options)


def compiled(module: nn.Module, settings: Settings, device: torch.device) -> nn.Module:
    """The module to run under ``settings.compile`` / ``compile_scope``: ``module`` itself (not compiled, or
    its blocks compiled in place), or a ``torch.compile`` wrapper of the whole of it (scope ``model``;
    parameter names of ``module`` are untouched either way). Training and inference passes of a model both
    run the object returned here."""
    if not compiles(settings, device):
        return module
    if settings.compile_scope == "model":
        return torch.compile(module)
    compile_blocks(module)
    return module


def make_optimizer(params: Any, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Fused Adam(W) on CPU and GPU: one kernel per step, and it skips a step on the device (``found_inf``)."""
    kw: dict[str, Any] = {"lr": cfg.lr, "betas": cfg.betas, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    cls = torch.optim.AdamW if cfg.weight_decay > 0 else torch.optim.Adam
    return cls(params, fused=True, **kw)


__all__ = ["CompileScope", "ProcessGroupSettings", "Settings", "autocast", "compile_blocks", "compiled", "compiles",
           "configure", "make_optimizer", "place"]
