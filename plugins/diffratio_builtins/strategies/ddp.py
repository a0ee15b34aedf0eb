"""Data parallel training: one process per device, launched by ``torchrun``, models in DistributedDataParallel.

    torchrun --nproc_per_node 2 -m diffratio train recipes/toy2d.toml --set strategy.name=ddp

Every rank holds the whole model and optimiser, draws its own batches (``run.batch_size`` is per rank)
and averages gradients in backward. Without a launcher the strategy runs as one process (world size 1).
``ProcessGroupStrategy`` here holds what ``ddp`` and ``deepspeed`` share: joining the process group,
choosing the device, and the collectives the engine uses to keep ranks in step (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal

import attrs
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from diffratio import DiffRatioError, OptimizerConfig, Strategy, Trainable
from diffratio_builtins.strategies.single import CompileScope, LocalTrainable, compiled

_positive = attrs.validators.gt(0)


def launcher_env() -> tuple[int, int, int] | None:
    """``(rank, world size, local rank)`` as set by ``torchrun`` or ``deepspeed``; None without a launcher."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise DiffRatioError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun): {exc}") from exc


def pick_device(name: str, local_rank: int) -> torch.device:
    """``auto``: this rank's GPU (``LOCAL_RANK``) when GPUs are visible, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if count == 0:
        raise DiffRatioError("strategy.device = 'cuda' but no CUDA GPU is visible; use device = \"cpu\" or \"auto\"")
    if local_rank >= count:
        raise DiffRatioError(f"this process has LOCAL_RANK {local_rank} but only {count} GPU(s) are visible: launch "
                             f"at most {count} processes per node (torchrun --nproc_per_node {count})")
    return torch.device("cuda", local_rank)


class ProcessGroupStrategy(Strategy):
    """One process per device in a ``torch.distributed`` process group (the base of ``ddp`` and ``deepspeed``).

    The group is joined from the launcher's environment (``env://``), or made of this one process when
    there is no launcher. Collectives run on the device (NCCL) or the CPU (gloo); they are skipped on
    one process.
    """

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        c = self.config
        env = launcher_env()
        rank, world, local = env if env is not None else (0, 1, 0)
        self._device = pick_device(c.device, local)
        backend = c.backend if c.backend != "auto" else ("nccl" if self._device.type == "cuda" else "gloo")
        if backend == "nccl" and self._device.type != "cuda":
            raise DiffRatioError("strategy.backend = 'nccl' needs CUDA devices; use backend = \"gloo\" on CPU")
        if c.threads > 0:
            torch.set_num_threads(c.threads)
        if self._device.type == "cuda":
            torch.cuda.set_device(self._device)
            torch.backends.cuda.matmul.allow_tf32 = c.tf32
            torch.backends.cudnn.allow_tf32 = c.tf32
            torch.backends.cudnn.benchmark = True
        self._owns_group = not dist.is_initialized()
        if self._owns_group:
            timeout = timedelta(minutes=c.timeout_minutes)
            if env is None:  # no launcher: a group of this process alone, no network port needed
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
            else:
                dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)
        self._rank, self._world = dist.get_rank(), dist.get_world_size()

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world

    def barrier(self) -> None:
        if self._world > 1:
            dist.barrier(device_ids=[self._device.index] if self._device.type == "cuda" else None)

    def all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        if self._world == 1 or not values:
            return values
        keys = sorted(values)  # every rank logs the same keys
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self._device)
        dist.all_reduce(t)
        return dict(zip(keys, (t / self._world).tolist(), strict=True))

    def max_over_ranks(self, values: Sequence[float]) -> list[float]:
        if self._world == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def gather_object(self, obj: Any) -> list[Any] | None:
        if self._world == 1:
            return [obj]
        out: list[Any] | None = [None] * self._world if self._rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        if self._world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def autocast(self) -> Any:
        if self.config.precision == "bf16":
            return torch.autocast(self._device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def close(self) -> None:
        """Leave the process group (after every rank got here) if this strategy joined it."""
        if self._owns_group and dist.is_initialized():
            self.barrier()
            dist.destroy_process_group()
            self._owns_group = False


class DDPTrainable(LocalTrainable):
    """A model in DistributedDataParallel with its own Adam; ranks agree on skipping a non-finite step.

    Gradients are averaged over ranks in backward, so the gradient norm is the same everywhere, but a
    loss may be non-finite on one rank only: the "finite" flag is reduced over ranks (on the device,
    without waiting) so that every rank skips the same steps and the replicas stay identical.
    """

    def __init__(self, module: nn.Module, optim: OptimizerConfig, ddp: nn.Module, forward_only: nn.Module) -> None:
        super().__init__(module, optim, wrapped=ddp)
        self._forward_only = forward_only

    def agree(self, ok: Tensor) -> Tensor:
        bad = (~ok).to(torch.float32)
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bad == 0


class DDP(ProcessGroupStrategy):
    """Data parallel over processes (``torchrun``): every trained model in DistributedDataParallel."""

    @attrs.frozen(kw_only=True)
    class Config:
        device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: the GPU of LOCAL_RANK when there are GPUs, else CPU
        backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on GPUs, gloo on CPU
        precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast of forward passes; weights, Adam in fp32
        tf32: bool = True  # allow TF32 matrix products on Ampere+ GPUs
        channels_last: bool = False  # memory format of 4-D image networks on GPU
        threads: int = 0  # CPU threads for torch per process (0 = torch's default)
        compile: bool = False  # torch.compile the networks on GPU (ignored on CPU); first steps slower
        compile_scope: CompileScope = "model"  # model: whole networks; blocks: each repeated block (faster to compile)
        find_unused_parameters: bool = False  # for networks with parameters that some steps do not use
        timeout_minutes: float = attrs.field(default=30.0, validator=_positive)
        # ^ how long a rank waits for the others in a collective (rank 0 evaluates while they wait)

    def prepare(self, name: str, module: nn.Module, optim: OptimizerConfig) -> Trainable:
        """Wrap ``module`` in DDP (rank 0's weights are broadcast to every rank here); frozen forward passes
        use the unwrapped (or compiled) module."""
        module = module.to(self._device)
        if self.config.channels_last and self._device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)
        inner = compiled(module, self.config, self._device)
        ddp = DistributedDataParallel(inner, device_ids=[self._device.index] if self._device.type == "cuda" else None,
                                      find_unused_parameters=self.config.find_unused_parameters)
        return DDPTrainable(module, optim, ddp, forward_only=inner)

    def prepare_frozen(self, module: nn.Module) -> nn.Module:
        return compiled(super().prepare_frozen(module), self.config, self._device)
