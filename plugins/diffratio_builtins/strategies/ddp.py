"""Data parallel training: one process per device, launched by ``torchrun``, models in DistributedDataParallel.

    torchrun --nproc_per_node 2 -m diffratio train recipes/toy2d.toml --set strategy.name=ddp

Every rank holds the whole model and optimiser, draws its own batches (``run.batch_size`` is per rank)
and averages gradients in backward. Without a launcher the strategy runs as one process (world size 1).
``ProcessGroupStrategy`` here holds what ``ddp`` and ``deepspeed`` share: joining the process group,
choosing the device, and the collectives the engine uses to keep ranks in step (docs/architecture.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

import attrs
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from diffratio import DiffRatioError, OptimizerConfig, Strategy, Trainable
from diffratio.config import setting
from diffratio.devices import resolve_device
from diffratio_builtins.strategies.common import ProcessGroupSettings, autocast, compiled, configure, place
from diffratio_builtins.strategies.single import LocalTrainable


def launcher_env() -> tuple[int, int, int] | None:
    """``(rank, world size, local rank)`` as set by ``torchrun`` or ``deepspeed``; None without a launcher."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise DiffRatioError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun): {exc}") from exc


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
        self._device = resolve_device(c.device, local)
        backend = c.backend if c.backend != "auto" else ("nccl" if self._device.type == "cuda" else "gloo")
        if backend == "nccl" and self._device.type != "cuda":
            raise DiffRatioError("strategy.backend = 'nccl' needs CUDA devices; use backend = \"gloo\" on CPU")
        configure(c, self._device)
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

    def autocast(self) -> AbstractContextManager[Any]:
        return autocast(self.config, self._device)

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

    def agree(self, ok: Tensor) -> Tensor:
        bad = (~ok).to(torch.float32)
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bad == 0


class DDP(ProcessGroupStrategy):
    """Data parallel over processes (``torchrun``): every trained model in DistributedDataParallel."""

    @attrs.frozen(kw_only=True)
    class Config(ProcessGroupSettings):
        find_unused_parameters: bool = setting(False, "for networks with parameters that some steps do not use")

    def prepare(self, name: str, module: nn.Module, optim: OptimizerConfig) -> Trainable:
        """Wrap the (compiled) module in DDP for training passes (rank 0's weights are broadcast to every
        rank here); inference passes run the compiled module without the wrapper."""
        module = place(module, self.config, self._device)
        run = compiled(module, self.config, self._device)
        # gradients as views of DDP's all-reduce buckets: no copy between the two in each step, and no second
        # gradient-sized buffer
        ddp = DistributedDataParallel(run, device_ids=[self._device.index] if self._device.type == "cuda" else None,
                                      find_unused_parameters=self.config.find_unused_parameters,
                                      gradient_as_bucket_view=True)
        return DDPTrainable(module, optim, train=ddp, infer=run)

    def prepare_frozen(self, module: nn.Module) -> nn.Module:
        return compiled(super().prepare_frozen(module), self.config, self._device)
