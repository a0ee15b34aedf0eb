"""DeepSpeed ZeRO: one DeepSpeed engine per trained model, each with its own Adam, launched by ``torchrun``.

    torchrun --nproc_per_node 2 -m diffratio train RECIPE --set strategy.name=deepspeed --set strategy.zero_stage=2

ZeRO stage 1 partitions the Adam moments over ranks, stage 2 the gradients too, stage 3 the weights as
well (gathered layer by layer in forward and backward). Checkpoints hold DeepSpeed's own files, one
folder per model (``checkpoints/<step>/<model>/ds/``), written by every rank into the checkpoint's
temporary folder and committed by the engine's atomic scheme; ``state.pt`` beside them keeps the EMA,
every rank's data and RNG states and the consolidated weights of each model, so that ``dr-sample`` and
``method.init`` read a DeepSpeed run like any other (in fp32, also where the engine holds bf16 weights).
DeepSpeed is optional:
``pip install 'diffratio[deepspeed]'``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from torch import Tensor, nn

from diffratio import (
    CheckpointError,
    DiffRatioError,
    MissingDependencyError,
    OptimizerConfig,
    Trainable,
    full_parameters,
)
from diffratio.config import setting
from diffratio.devices import resolve_device
from diffratio_builtins.strategies.common import ProcessGroupSettings, compile_blocks, compiled, compiles, place
from diffratio_builtins.strategies.ddp import ProcessGroupStrategy, launcher_env

#: DeepSpeed's tag (sub-folder) of each model's checkpoint inside a diffratio checkpoint folder
TAG = "ds"
INSTALL = "pip install 'diffratio[deepspeed]'"


def import_deepspeed(device: torch.device) -> Any:
    """Import DeepSpeed for ``device`` (its accelerator is chosen at import), or name what to install."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
    try:
        import deepspeed
    except ImportError as exc:
        raise MissingDependencyError("deepspeed", "strategy 'deepspeed'", install=INSTALL) from exc
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)  # its INFO lines come from every rank
    return deepspeed


def engine_config(optim: OptimizerConfig, zero_stage: int, precision: str) -> dict[str, Any]:
    """The DeepSpeed config of one model: its Adam(W) (torch's, so no CUDA op is built), clipping, ZeRO
    stage and precision (``DeepSpeed.Config.precision``): ``bf16`` is torch autocast over fp32 weights and
    master copy; ``bf16-weights`` is DeepSpeed's own ``bf16`` mode (bf16 weights in the engine, fp32 master
    weights and Adam moments in its ZeRO optimiser), whose modules get the casting hooks of
    ``hold_bf16_weights``."""
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,  # required by DeepSpeed; batches are the method's, not its loader's
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW" if optim.weight_decay > 0 else "Adam",
                      "params": {"lr": optim.lr, "betas": list(optim.betas), "eps": optim.eps,
                                 "weight_decay": optim.weight_decay, "torch_adam": True,
                                 "adam_w_mode": optim.weight_decay > 0}},
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
        # the loop measures images/s itself; DeepSpeed's throughput timer would synchronise the device at
        # every forward and step of every engine, a host wait each
        "timers": {"throughput": {"enabled": False}},
    }
    if precision == "bf16":
        cfg["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    elif precision == "bf16-weights":
        cfg["bf16"] = {"enabled": True}
    return cfg


def merge_config(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in: tables (dicts) merge key by key, at any depth; any other value of
    ``extra`` replaces ``base``'s. Neither input is changed."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with its floating-point tensors cast to ``dtype``: a tensor, or tensors nested in tuples,
    lists and dicts; integer tensors (class labels) and anything else are returned as they are."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(_cast_floats(v, dtype) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_cast_floats(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast_floats(v, dtype) for k, v in value.items()}
    return value


def cast_inputs_to_weights(module: nn.Module, args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """Forward pre-hook (``with_kwargs=True``): cast the floating-point tensor arguments to the dtype of
    ``module``'s weights (its first floating-point parameter), bf16 under ``bf16-weights``.

    Methods pass fp32 tensors (data, noise, sigma; labels are integers and stay so), and fp32 buffers or
    fp32 embeddings inside a backbone meet bf16 layers too, which matrix products do not mix. Following
    the weights' dtype rather than a fixed bf16 keeps a copy of the module that carries these hooks (the
    fp32 generator EMA of ``make_ema``) working, as a no-op. Gradients flow through the casts."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype is None:
        return None
    return _cast_floats(args, dtype), _cast_floats(kwargs, dtype)


def outputs_to_fp32(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    """Forward hook: cast the floating-point tensors of ``output`` (a tensor, or a tuple, list or dict of
    them) to fp32, so that losses, the other model and the EMA see fp32 as with fp32 weights."""
    return _cast_floats(output, torch.float32)


def hold_bf16_weights(module: nn.Module) -> None:
    """Hooks that let fp32 callers use ``module`` whose weights the engine holds in bf16, registered on the
    module itself (no wrapper: parameter names and checkpoints stay the same).

    ``cast_inputs_to_weights`` on ``module`` and on every sub-module that owns parameters (a backbone's
    noise features, its fp32 buffers such as DiT's fixed position embedding, and the fp32 ``c_noise`` are
    combined with bf16 layers), ``outputs_to_fp32`` on ``module``. Precision: the whole forward pass runs
    in bf16 from the inputs on, including sigma and so the EDM preconditioning (``c_skip``, ``c_out``,
    ``c_in``, ``c_noise``), which ``EDMDenoiser`` and ``ClassifierRatio`` compute inside the prepared
    module in the dtype of ``x``. Buffers stay fp32 (DeepSpeed casts parameters only);
    a backbone that adds one to its activations casts it to its weights' dtype first (DiT's fixed sin/cos
    position embedding), so that its residual stream is bf16 too (docs/scale.md)."""
    for m in module.modules():
        if m is module or any(True for _ in m.parameters(recurse=False)):
            m.register_forward_pre_hook(cast_inputs_to_weights, with_kwargs=True)
    module.register_forward_hook(outputs_to_fp32)


def zero3_offload(engine: Any) -> Any | None:
    """The ZeRO-3 parameter offload of ``engine`` (its module hooks and their parameter coordinator), None
    under ZeRO 1 and 2."""
    return getattr(engine.optimizer, "parameter_offload", None) if engine.zero_optimization_stage() == 3 else None


def new_coordinator(offload: Any) -> Any:
    """A ZeRO-3 parameter coordinator configured as ``offload``'s own (prefetch bucket, reuse distance, live
    parameters, quantisation, leaf modules), sharing its all-gather stream and its registry of parameters
    in flight, with no trace recorded yet."""
    from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum
    from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator

    return PartitionedParameterCoordinator(
        prefetch_bucket_sz=offload._prefetch_bucket_sz,
        max_reuse_distance_in_numel=offload._max_reuse_distance_in_numel,
        max_available_parameters_in_numel=offload._max_available_parameters_in_numel,
        allgather_stream=offload._DeepSpeedZeRoOffload__allgather_stream,
        inflight_param_registry=offload.module.ds_inflight_param_registry,
        prefetch_nvme=offload.offload_device == OffloadDeviceEnum.nvme,
        timers=offload.timers,
        zero_quantized_weights=offload.zero_quantized_weights,
        zero_quantized_nontrainable_weights=offload.zero_quantized_nontrainable_weights,
        fast_sharding_for_leaf_module=offload.fast_sharding_for_leaf_module,
        log_trace_cache_warnings=offload.log_trace_cache_warnings,
    )


class DeepSpeedTrainable(Trainable):
    """A model in its DeepSpeed engine: ``forward`` runs the engine, ``infer`` and ``model`` the module inside
    it (compiled in place where the strategy compiles; with ZeRO-3 its parameters are partitioned: use
    ``diffratio.full_parameters`` to read them outside a forward pass).

    A non-finite step is skipped by DeepSpeed itself: it checks the global gradient norm and drops the
    update on every rank (that check waits for the device inside DeepSpeed); a non-finite loss is turned
    into non-finite gradients to reach it.

    Under ZeRO-3, ``forward`` and ``infer`` each have their own parameter coordinator. DeepSpeed records the
    order in which sub-modules gather their weights from one call of the module to the next (its forward
    and whatever backward follows), checks that order against the other ranks (a collective and host
    reads) until one recorded order repeats, and only then prefetches. The two passes gather in different
    orders (a ``no_grad`` inference has no backward; a frozen estimator's backward skips the sub-modules
    whose outputs need no gradient): a record shared by both would never repeat, and DeepSpeed would
    re-record and re-check it at every step without ever prefetching. Each pass repeats its own order,
    which its own coordinator completes after two calls. The backward of a call runs under the coordinator
    of that call, so it must end before the next call of the other pass (as in the built-in methods).
    """

    def __init__(self, name: str, engine: Any, device: torch.device, optim: OptimizerConfig) -> None:
        self.name = name
        self.engine = engine
        self.model = engine.module
        self.optim = optim
        self.device = device
        self._flags = tuple(torch.tensor(v, device=device) for v in (False, True))  # last_step_ok, by value
        self.last_step_ok = self._flags[1]
        self._offload = zero3_offload(engine)
        self._coordinators = {} if self._offload is None else {
            "forward": self._offload.param_coordinator, "infer": new_coordinator(self._offload)}

    def _use_coordinator(self, call: Literal["forward", "infer"]) -> None:
        """Under ZeRO-3, give the module's hooks the parameter coordinator of ``call`` (see the class
        docstring); submodules left gathered by the other coordinator's backward are released first, as
        DeepSpeed does at the end of each of its backward passes."""
        if not self._coordinators:
            return
        coordinator = self._coordinators[call]
        if self._offload.param_coordinator is not coordinator:
            self._offload.param_coordinator.release_backward_leftovers()
            self._offload.param_coordinator = coordinator

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._use_coordinator("forward")
        return self.engine(*args, **kwargs)

    def infer(self, *args: Any, **kwargs: Any) -> Any:
        self._use_coordinator("infer")
        return self.model(*args, **kwargs)

    def backward(self, loss: Tensor) -> None:
        # x * (1 + 0) is x bit for bit; a non-finite loss makes every gradient NaN, which DeepSpeed skips
        poison = torch.where(torch.isfinite(loss.detach()), 0.0, math.nan).to(loss.dtype)
        self.engine.backward(loss * (1 + poison))

    def step(self) -> dict[str, Tensor]:
        """DeepSpeed's step; ``grad_norm`` is its global gradient norm (inf when it skipped the step, NaN where
        its configuration computes none)."""
        self.engine.step()
        applied = bool(self.engine.was_step_applied())
        self.last_step_ok = self._flags[applied]
        norm = self.engine.get_global_grad_norm() if applied else math.inf
        if isinstance(norm, Tensor):
            return {"grad_norm": norm.detach().float().reshape(()).to(self.device)}
        return {"grad_norm": torch.tensor(math.nan if norm is None else float(norm), device=self.device)}

    def set_lr(self, lr: float) -> None:
        # the engine's (ZeRO) optimiser shares its param_groups with the torch Adam inside it
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        """The consolidated weights (gathered under ZeRO-3; every rank calls it), for sampling and
        ``method.init``, in fp32 (bf16 weights of ``bf16-weights`` are widened; the fp32 master weights
        stay in DeepSpeed's files); weights and optimiser resume from those files (``save_files``)."""
        with full_parameters(self.model):
            model = {k: _fp32(v.detach()).cpu().clone() for k, v in self.model.state_dict().items()}
        return {"model": model, "deepspeed": self.name}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "deepspeed" not in state:
            raise CheckpointError(f"the state of {self.name!r} was not written by the deepspeed strategy; resume "
                                  "with the strategy that wrote it")

    def save_files(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder), tag=TAG, save_latest=False)

    def load_files(self, folder: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(folder), tag=TAG, load_module_strict=True,
                                              load_optimizer_states=True, load_lr_scheduler_states=False)
        if path is None:
            raise CheckpointError(f"{folder} holds no DeepSpeed checkpoint of {self.name!r}")


def _fp32(t: Tensor) -> Tensor:
    """``t`` in fp32 if it is a floating-point tensor of fewer bits (bf16, fp16), else as it is."""
    return t.float() if t.is_floating_point() and torch.finfo(t.dtype).bits < 32 else t


class DeepSpeed(ProcessGroupStrategy):
    """DeepSpeed ZeRO data parallelism: one engine (and Adam) per trained model; launched by ``torchrun``."""

    #: ZeRO shards optimiser state per process: a checkpoint resumes with the same number of processes
    resizable = False

    @attrs.frozen(kw_only=True)
    class Config(ProcessGroupSettings):
        precision: Literal["fp32", "bf16", "bf16-weights"] = setting(
            "fp32", "fp32: all fp32; bf16: autocast over fp32 weights and Adam; bf16-weights: DeepSpeed's bf16 mode, "
            "bf16 weights over fp32 master weights and Adam (docs/scale.md)")
        zero_stage: Literal[1, 2, 3] = setting(2, "ZeRO stage: 1 partitions Adam's moments, 2 also the gradients, "
                                               "3 also the weights")
        engine_config: dict[str, Any] = setting(
            factory=dict, doc="DeepSpeed config merged into every engine's, table by table, over what the strategy "
            "sets (DeepSpeed checks the keys); e.g. {bf16 = {check_grad_overflow = false}} drops the overflow check "
            "of bf16-weights and with it the skipping of non-finite steps")

    def __init__(self, config: Config | None = None) -> None:
        config = config if config is not None else self.Config()
        env = launcher_env()
        self._ds = import_deepspeed(resolve_device(config.device, env[2] if env else 0))
        super().__init__(config)  # joins the process group; DeepSpeed then uses it
        if env is None:  # DeepSpeed's engines read it even in one process (RANK stays unset: no launcher)
            os.environ.setdefault("LOCAL_RANK", "0")
        self._ds.init_distributed(dist_backend=torch.distributed.get_backend(), verbose=False)
        self._trainables: dict[str, DeepSpeedTrainable] = {}

    def prepare(self, name: str, module: nn.Module, optim: OptimizerConfig) -> Trainable:
        """One DeepSpeed engine with its own Adam for ``module`` (rank 0's weights are broadcast)."""
        if name in self._trainables:
            raise DiffRatioError(f"strategy 'deepspeed': two models named {name!r}; names must be unique")
        module = place(module, self.config, self._device)
        params = [p for p in module.parameters() if p.requires_grad]
        engine, *_ = self._ds.initialize(model=module, model_parameters=params,
                                         config=merge_config(engine_config(optim, self.config.zero_stage,
                                                                           self.config.precision),
                                                             self.config.engine_config),
                                         dist_init_required=False)
        if self.config.precision == "bf16-weights":
            hold_bf16_weights(engine.module)
        if compiles(self.config, self._device):
            if self.config.compile_scope == "model":
                engine.compile()  # compiles engine.module in place: training and inference passes both run it
            else:
                compile_blocks(engine.module)
        trainable = DeepSpeedTrainable(name, engine, self._device, optim)
        self._trainables[name] = trainable
        return trainable

    def prepare_frozen(self, module: nn.Module) -> nn.Module:
        """Also in bf16 (with the casting hooks of the engines' models) under ``bf16-weights``, and compiled
        like the trained models."""
        module = super().prepare_frozen(module)
        if self.config.precision == "bf16-weights":
            for p in module.parameters():
                p.data = p.data.to(torch.bfloat16)
            hold_bf16_weights(module)
        return compiled(module, self.config, self._device)

    def close(self) -> None:
        """Wait for every rank; the process group stays (DeepSpeed keeps its groups for the process's life,
        so a later run in the same process joins it again)."""
        self.barrier()

    def save_files(self, folder: Path) -> None:
        """Each engine's DeepSpeed checkpoint into ``folder/<model>/``; every rank writes its shards."""
        for name, t in self._trainables.items():
            t.save_files(folder / name)

    def load_files(self, folder: Path) -> None:
        for name, t in self._trainables.items():
            t.load_files(folder / name)
