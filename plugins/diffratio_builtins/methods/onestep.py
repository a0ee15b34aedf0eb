"""The base of the one-step generator methods (``diffratio``, ``vsd``): a generator with an EMA, trained
against an auxiliary network (a ratio estimator, a fake score) that is updated ``aux_steps`` times per
generator step after a warm-up of ``warmup_steps`` updates.

Each ``train_step`` call is one step of the loop: a warm-up update of the auxiliary network while
``step < warmup_steps``, then auxiliary updates and one generator update. The generator's EMA warm-up and
the learning-rate decay count generator updates (``step - warmup_steps``) over ``run.steps - warmup_steps``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import Tensor, nn

from diffratio import Generator, Method, OptimizerConfig, RatioEstimator, Sampler, Trainable
from diffratio.config import empty_is_none, setting
from diffratio.losses import Weighting, apply_weighting
from diffratio_builtins.methods.common import EmaWarmup, make_ema, scheduled_lrs, update_ema

if TYPE_CHECKING:
    from diffratio.engine import RunContext
    from diffratio.inference import InferenceContext


class GeneratorSampler(Sampler):
    """Samples of a one-step generator ``x = g(z, labels)`` (one evaluation), and its ratio estimator if any."""

    def __init__(self, generator: Generator, ratio: RatioEstimator | None = None, *, device: torch.device,
                 data_shape: tuple[int, ...], num_labels: int, autocast: Callable[[], AbstractContextManager[Any]],
                 verifier_sigma: float | None = None) -> None:
        self.generator = generator
        self.ratio = ratio
        self.verifier_sigma = verifier_sigma
        self.device = device
        self.latent_shape = generator.latent_shape(tuple(data_shape))
        self.num_labels = num_labels
        self.autocast = autocast

    @torch.no_grad()
    def sample(self, n: int, class_labels: Tensor | None = None) -> Tensor:
        labels = class_labels
        if labels is None and self.num_labels:
            labels = torch.randint(self.num_labels, (n,), device=self.device)
        z = torch.randn(n, *self.latent_shape, device=self.device)
        with self.autocast():
            return self.generator(z, labels).float()

    def networks(self) -> dict[str, nn.Module]:
        nets: dict[str, nn.Module] = {"generator": self.generator}
        if self.ratio is not None:
            nets["ratio"] = self.ratio
        return nets


@attrs.frozen(kw_only=True)
class OneStepConfig:
    """Settings every one-step generator method has."""

    generator_optimizer: OptimizerConfig = setting(OptimizerConfig(lr=3e-5), "Adam of the one-step generator")
    ema_decay: float = setting(0.999, "decay of the generator's EMA (the weights that sample and are evaluated), "
                                      "warmed up early", ge=0, lt=1)
    ema_warmup: EmaWarmup = setting("ramp", "EMA decay warm-up: ramp, average or none (methods/common.py)")
    init: str | None = setting(None, "pretraining run directory / checkpoint the networks start from; "
                                     'unset (or "") = from scratch', converter=empty_is_none)
    generator_weighting: Weighting = setting("one", "w(sigma) of the generator loss: one, sigma2, snr or edm")


class OneStepMethod(Method):
    """Shared training loop, sampling and state of a one-step generator and its auxiliary network."""

    gen: Trainable
    aux: Trainable
    #: the auxiliary network's name in logs, state dicts and parameter counts ("ratio", "fake")
    aux_name: str

    def __init__(self, config: Any, *, ctx: RunContext, generator: Generator, aux: nn.Module) -> None:
        super().__init__(config, ctx=ctx)
        self.schedule = ctx.build_schedule()
        self.gen = ctx.strategy.prepare("generator", generator, config.generator_optimizer)
        self.aux = ctx.strategy.prepare(self.aux_name, aux, self.aux_optimizer)
        self.ema = make_ema(self.gen.model)
        self.sampler = GeneratorSampler(self.ema, device=ctx.device, data_shape=ctx.data_shape,
                                        num_labels=ctx.num_labels, autocast=ctx.strategy.autocast)

    # ---- what a subclass declares ----

    @property
    @abstractmethod
    def aux_optimizer(self) -> OptimizerConfig: ...

    @property
    @abstractmethod
    def aux_steps(self) -> int:
        """Auxiliary updates per generator update."""

    @property
    @abstractmethod
    def warmup_steps(self) -> int:
        """Auxiliary updates before the first generator update (one per loop step)."""

    @abstractmethod
    def aux_step(self) -> dict[str, Tensor]:
        """One update of the auxiliary network on detached generated samples."""

    @abstractmethod
    def generator_step(self, update: int) -> dict[str, Tensor]:
        """Generator update number ``update`` (0-based; the EMA warm-up counts these)."""

    # ---- the loop step ----

    def generator_weight(self, sigma: Tensor) -> Tensor:
        """``w(sigma)`` of the generator loss (``generator_weighting``), with the data's sigma_data."""
        return apply_weighting(self.config.generator_weighting, sigma, self.gen.model.denoiser.sigma_data)

    def train_step(self, step: int) -> dict[str, Tensor]:
        update = step - self.warmup_steps
        total = max(1, self.ctx.settings.steps - self.warmup_steps)
        lrs = scheduled_lrs(max(update, 0), total, self.ctx.device, generator=self.gen,
                            **{self.aux_name: self.aux})
        if update < 0:
            return {**self.aux_step(), **lrs}
        for _ in range(self.aux_steps):
            scalars = self.aux_step()
        return {**scalars, **self.generator_step(update), **lrs}

    def update_ema(self, update: int) -> None:
        """Move the EMA towards the generator after generator update ``update``; a skipped update (non-finite
        loss or gradients, ``last_step_ok`` false on the device) leaves it, without waiting for the device."""
        update_ema(self.ema, self.gen.model, self.config.ema_decay, update, self.config.ema_warmup,
                   applied=self.gen.last_step_ok)

    # ---- sampling and state ----

    @classmethod
    def build_sampler(cls, config: Any, *, ctx: InferenceContext) -> GeneratorSampler:
        return GeneratorSampler(ctx.build_generator(), device=ctx.device, data_shape=ctx.data_shape,
                                num_labels=ctx.num_labels, autocast=ctx.strategy.autocast)

    @classmethod
    def inference_weights(cls, state: Mapping[str, Any]) -> dict[str, dict[str, Tensor]]:
        return {"generator": state["generator_ema"]}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.gen.state_dict(), self.aux_name: self.aux.state_dict(),
                "generator_ema": self.ema.state_dict(), "data": self.data_info()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.gen.load_state_dict(state["generator"])
        self.aux.load_state_dict(state[self.aux_name])
        self.ema.load_state_dict(state["generator_ema"])
