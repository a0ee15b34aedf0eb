"""The trained-model wrapper that a Strategy returns (``Trainable``) and the optimiser settings of one
trained model (``OptimizerConfig``)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
from torch import Tensor, nn

from diffratio.config import setting
from diffratio.errors import DiffRatioError


class Trainable(ABC):
    """A model with its optimiser, as placed by a Strategy; one handle per purpose.

    - ``model``: the plain ``nn.Module`` (state dicts, the EMA's source, parameter counts, export). Under
      DeepSpeed ZeRO-3 its parameters are partitioned: read them through ``diffratio.full_parameters``.
    - ``forward(*args, **kwargs)``: the forward pass that trains this model, through the strategy's
      wrappers (DDP, a DeepSpeed engine) and its compilation.
    - ``infer(*args, **kwargs)``: a forward pass that does not train this model (another model's loss,
      sampling): compiled exactly where ``forward`` is, never wrapped for gradient synchronisation. Callers
      wrap it in ``torch.no_grad()``, or freeze ``model`` when gradients must reach the inputs only.
    - ``backward(loss)`` then ``step()``: one optimiser update; ``last_step_ok`` says on the device
      whether it was applied.

    A step whose loss (as given to ``backward``) or gradients are not finite is skipped: no optimiser
    update, and ``last_step_ok`` turns false so that the method skips its EMA update too. The engine
    counts such steps from the scalars a method returns (``grad_norm`` among them) and stops a run
    after ``run.max_nonfinite_steps`` in a row.

    A strategy that neither wraps nor compiles need not override ``forward`` and ``infer``.
    """

    #: the plain module (see the class docstring)
    model: nn.Module
    #: the model's optimiser settings, as given to ``Strategy.prepare``
    optim: OptimizerConfig
    #: whether the last ``step()`` applied its update: a 0-d bool tensor on the device. Reading it on the
    #: host waits for the step; use it in tensor arithmetic (an EMA weight) instead.
    last_step_ok: Tensor

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The training forward pass (gradients reach the parameters and are synchronised over ranks)."""
        return self.model(*args, **kwargs)

    def infer(self, *args: Any, **kwargs: Any) -> Any:
        """A forward pass that does not train this model; compiled where ``forward`` is."""
        return self.model(*args, **kwargs)

    @abstractmethod
    def backward(self, loss: Tensor) -> None:
        """Accumulate the gradients of ``loss`` (noting whether it is finite)."""

    @abstractmethod
    def step(self) -> dict[str, Tensor]:
        """Clip, step the optimiser and zero the gradients; return diagnostics, ``grad_norm`` among them
        as a 0-d tensor (not finite when the step was skipped).

        When the loss or any gradient is not finite, skip the update, decided on the device without
        waiting for it, and set ``last_step_ok`` false; the gradients are cleared either way.
        """

    def set_lr(self, lr: float) -> None:
        """Set the optimiser's learning rate for the following steps."""
        raise NotImplementedError(f"{type(self).__name__} cannot change its learning rate")

    def schedule_lr(self, step: int, total: int) -> float | None:
        """Set the learning rate of global step ``step`` of ``total`` (``OptimizerConfig.lr_at``) and return
        it; methods call it at the start of each ``train_step``. None, and nothing set, without a decay."""
        optim = getattr(self, "optim", None)
        if optim is None:
            raise DiffRatioError(f"{type(self).__name__} has no `optim`: its Strategy.prepare must keep the "
                                 "OptimizerConfig it was given as `trainable.optim` (the learning-rate decay reads it)")
        if optim.lr_decay == "none":
            return None
        lr = optim.lr_at(step, total)
        self.set_lr(lr)
        return lr

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def save_files(self, folder: Path) -> None:
        """Write state that ``state_dict`` does not hold into ``folder`` (DeepSpeed's own sharded
        checkpoint); every rank calls it. Nothing by default."""
        return None

    def load_files(self, folder: Path) -> None:
        """Read back what ``save_files`` wrote (after ``load_state_dict``); every rank calls it."""
        return None

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()


@attrs.frozen(kw_only=True)
class OptimizerConfig:
    """Adam(W) settings of one trained model."""

    lr: float = setting(1e-4, "learning rate", ge=0)
    betas: tuple[float, float] = setting((0.0, 0.99), "Adam's decay rates of the gradient's first and second moments")
    weight_decay: float = setting(0.0, "decoupled weight decay (AdamW when > 0)", ge=0)
    eps: float = setting(1e-8, "added to the root of the second moment (Adam's epsilon)", gt=0)
    grad_clip: float = setting(0.0, "clip the gradients' total L2 norm to this; 0 = off", ge=0)
    lr_decay: Literal["none", "cosine", "linear"] = setting("none", "decay of lr over the run: none, cosine or linear")
    lr_decay_start: float = setting(0.0, "fraction of run.steps after which the decay begins (0 = from the first "
                                    "step)", ge=0, lt=1)
    lr_final: float = setting(0.0, "learning rate at the last step, as a fraction of lr", ge=0, le=1)

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate of global step ``step`` (0-based) of a run of ``total`` steps: ``lr`` until
        ``lr_decay_start * total``, then down to ``lr_final * lr`` at step ``total - 1`` along a half cosine
        or a line (and stays there). A pure function of the step, so nothing is checkpointed and a
        resumed run continues bit for bit; extending a finished run (a larger ``run.steps``) re-spreads the
        decay over the new length."""
        if self.lr_decay == "none":
            return self.lr
        start = self.lr_decay_start * total
        if step <= start:
            return self.lr
        t = min(1.0, (step - start) / (total - 1 - start)) if total - 1 > start else 1.0
        keep = 0.5 * (1.0 + math.cos(math.pi * t)) if self.lr_decay == "cosine" else 1.0 - t
        return self.lr * (self.lr_final + (1.0 - self.lr_final) * keep)


__all__ = ["OptimizerConfig", "Trainable"]
