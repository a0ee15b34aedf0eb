"""The DiffRatio method: a time-conditional classifier's logit gradient drives a one-step generator.

One iteration (docs/concepts.md section 5): ``ratio_steps`` logistic-regression steps of the ratio
estimator on generated (label 1) and real (label 0) samples, then one generator step on the surrogate
loss ``w(sigma) * sg(h(f)) * f(g(z) + sigma eps)`` with the estimator frozen, then the generator EMA.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

from diffratio import Method, OptimizerConfig, count_parameters
from diffratio.losses import accuracy, generator_loss, ratio_loss
from diffratio.verifier import DEFAULT_VERIFIER_SIGMA
from diffratio_builtins.methods.common import (
    EmaWarmup,
    frozen,
    load_denoiser_weights,
    make_ema,
    scheduled_lrs,
    update_ema,
)


class DiffRatio(Method):
    """DiffRatio training of a one-step generator (any divergence, any backbone)."""

    uses = ("backbone", "generator", "ratio", "divergence", "schedule")

    @attrs.frozen(kw_only=True)
    class Config:
        generator_optimizer: OptimizerConfig = OptimizerConfig(lr=3e-5)  # Adam of the one-step generator
        ratio_optimizer: OptimizerConfig = OptimizerConfig(lr=1e-4)  # Adam of the ratio estimator
        ratio_steps: int = attrs.field(default=1, validator=attrs.validators.ge(1))  # per generator step
        warmup_ratio_steps: int = attrs.field(default=0, validator=attrs.validators.ge(0))  # before step 1
        ema_decay: float = attrs.field(default=0.999, validator=[attrs.validators.ge(0), attrs.validators.lt(1)])
        # ^ decay of the generator's EMA (the weights that sample and are evaluated), warmed up early
        ema_warmup: EmaWarmup = "ramp"  # EMA decay warm-up: ramp, average or none (methods/common.py)
        init: str = ""  # pretraining run dir / checkpoint for generator and encoder; "" = from scratch
        verifier_sigma: float = attrs.field(default=DEFAULT_VERIFIER_SIGMA, validator=attrs.validators.ge(0))
        # ^ noise level at which `dr-sample --candidates N` scores candidates with the ratio estimator
        #   (sampling only; docs/results.md section 7)

    def __init__(self, config: Config, *, ctx: Any) -> None:
        super().__init__(config, ctx=ctx)
        generator = ctx.build_generator()
        ratio = ctx.build_ratio()
        if config.init:
            load_denoiser_weights(config.init, generator.denoiser, "generator")
            ratio.init_from_denoiser(generator.denoiser.state_dict())
        self.divergence = ctx.build_divergence()
        self.schedule = ctx.build_schedule()
        self.gen = ctx.strategy.prepare("generator", generator, config.generator_optimizer)
        self.ratio = ctx.strategy.prepare("ratio", ratio, config.ratio_optimizer)
        self.ema = make_ema(self.gen.raw)
        self.warmed_up = config.warmup_ratio_steps == 0

    # ---- the two steps ----

    def ratio_step(self) -> dict[str, Tensor]:
        """One logistic-regression step: generated samples (detached) are class 1, data class 0."""
        ctx, n = self.ctx, self.ctx.settings.batch_size
        x_real, y_real = ctx.real_batch(n)
        y_fake = ctx.random_labels(n)
        with torch.no_grad(), ctx.strategy.autocast():
            x_fake = self.gen.forward_only(ctx.latents(self.gen.raw, n), y_fake).float()
        x = torch.cat([x_fake, x_real])
        y = None if y_real is None else torch.cat([y_fake, y_real])
        sigma = self.schedule.sample(2 * n, ctx.device)
        with ctx.strategy.autocast():
            logits = self.ratio.module(self.schedule.noise(x, sigma), sigma, y)
        lam = self.schedule.ratio_weight(sigma)
        loss = ratio_loss(logits[:n], logits[n:], lam[:n], lam[n:])
        self.ratio.backward(loss)
        out = self.ratio.step()
        return {"loss/ratio": loss.detach(), "ratio/accuracy": accuracy(logits[:n], logits[n:]).detach(),
                "ratio/logit_fake": logits[:n].detach().mean(), "ratio/logit_real": logits[n:].detach().mean(),
                "ratio/grad_norm": out["grad_norm"]}

    def generator_step(self, step: int) -> dict[str, Tensor]:
        """One generator step through the frozen ratio estimator (gradient flows through its input)."""
        ctx, n = self.ctx, self.ctx.settings.batch_size
        labels = ctx.random_labels(n)
        sigma = self.schedule.sample(n, ctx.device)
        # the estimator stays frozen through the backward pass too, where activation checkpointing
        # (backbone.activation_checkpointing) recomputes its blocks exactly as they ran forward
        with frozen(self.ratio.raw):
            with ctx.strategy.autocast():
                x = self.gen.module(ctx.latents(self.gen.raw, n), labels)
                f = self.ratio.forward_only(self.schedule.noise(x.float(), sigma), sigma, labels)
            loss = generator_loss(f, self.divergence, self.schedule.generator_weight(sigma))
            self.gen.backward(loss)
        out = self.gen.step()
        if self.gen.last_step_ok:  # false when the update was skipped (non-finite loss or gradients)
            update_ema(self.ema, self.gen.raw, self.config.ema_decay, step, self.config.ema_warmup)
        return {"loss/generator": loss.detach(), "generator/logit": f.detach().mean(),
                "generator/grad_norm": out["grad_norm"]}

    def train_step(self, step: int) -> dict[str, Tensor | float]:
        lrs = scheduled_lrs(step, self.ctx.settings.steps, generator=self.gen, ratio=self.ratio)
        if not self.warmed_up:
            for _ in range(self.config.warmup_ratio_steps):
                self.ratio_step()
            self.warmed_up = True
        for _ in range(self.config.ratio_steps):
            scalars = self.ratio_step()
        return {**scalars, **self.generator_step(step), **lrs}

    # ---- sampling and state ----

    @torch.no_grad()
    def sample(self, n: int, class_labels: Tensor | None = None) -> Tensor:
        labels = class_labels if class_labels is not None else self.ctx.random_labels(n)
        with self.ctx.strategy.autocast():
            return self.ema(self.ctx.latents(self.ema, n), labels).float()

    def parameter_counts(self) -> dict[str, int]:
        return {"generator": count_parameters(self.gen.raw), "ratio": count_parameters(self.ratio.raw)}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.gen.state_dict(), "ratio": self.ratio.state_dict(),
                "generator_ema": self.ema.state_dict(), "warmed_up": self.warmed_up}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.gen.load_state_dict(state["generator"])
        self.ratio.load_state_dict(state["ratio"])
        self.ema.load_state_dict(state["generator_ema"])
        self.warmed_up = bool(state["warmed_up"])
