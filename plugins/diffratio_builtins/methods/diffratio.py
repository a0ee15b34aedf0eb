"""The DiffRatio method: a time-conditional classifier's logit gradient drives a one-step generator.

One step of the loop (docs/concepts.md section 5): ``ratio_steps`` logistic-regression steps of the ratio
estimator on generated (label 1) and real (label 0) samples, then one generator step on the surrogate
loss ``w(sigma) * sg(h(f)) * f(g(z) + sigma eps)`` with the estimator frozen, then the generator EMA.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import Tensor

from diffratio import OptimizerConfig, Trainable, count_parameters
from diffratio.config import setting
from diffratio.losses import Weighting, accuracy, apply_weighting, generator_loss, ratio_loss
from diffratio.verifier import DEFAULT_VERIFIER_SIGMA
from diffratio_builtins.methods.common import frozen, load_denoiser_weights
from diffratio_builtins.methods.onestep import GeneratorSampler, OneStepConfig, OneStepMethod

if TYPE_CHECKING:
    from diffratio.engine import RunContext
    from diffratio.inference import InferenceContext


class DiffRatio(OneStepMethod):
    """DiffRatio training of a one-step generator (any divergence, any backbone)."""

    uses = ("backbone", "generator", "ratio", "divergence", "schedule")
    aux_name = "ratio"

    @attrs.frozen(kw_only=True)
    class Config(OneStepConfig):
        ratio_optimizer: OptimizerConfig = setting(OptimizerConfig(lr=1e-4), "Adam of the ratio estimator")
        ratio_steps: int = setting(1, "ratio estimator updates per generator update", ge=1)
        warmup_ratio_steps: int = setting(0, "ratio estimator updates before the first generator update, one "
                                             "per step of the loop", ge=0)
        ratio_weighting: Weighting = setting("one", "lambda(sigma) of the ratio loss: one, sigma2, snr or edm")
        verifier_sigma: float = setting(DEFAULT_VERIFIER_SIGMA, "noise level at which `dr-sample --candidates N` "
                                                                "scores candidates with the ratio estimator", ge=0)

    def __init__(self, config: Config, *, ctx: RunContext) -> None:
        generator = ctx.build_generator()
        ratio = ctx.build_ratio()
        if config.init is not None:
            load_denoiser_weights(config.init, generator.denoiser, "generator", ctx.registry)
            ratio.init_from_denoiser(generator.denoiser.state_dict())
        self.divergence = ctx.build_divergence()
        super().__init__(config, ctx=ctx, generator=generator, aux=ratio)
        self.sampler.ratio = self.aux.model
        self.sampler.verifier_sigma = config.verifier_sigma

    @property
    def ratio(self) -> Trainable:
        """The ratio estimator as trained (``aux``)."""
        return self.aux

    @property
    def aux_optimizer(self) -> OptimizerConfig:
        return self.config.ratio_optimizer

    @property
    def aux_steps(self) -> int:
        return self.config.ratio_steps

    @property
    def warmup_steps(self) -> int:
        return self.config.warmup_ratio_steps

    def ratio_weight(self, sigma: Tensor) -> Tensor:
        """``lambda(sigma)`` of the ratio loss (``ratio_weighting``), with the data's sigma_data."""
        return apply_weighting(self.config.ratio_weighting, sigma, self.ratio.model.sigma_data)

    # ---- the two steps ----

    def aux_step(self) -> dict[str, Tensor]:
        """One logistic-regression step: generated samples (detached) are class 1, data class 0."""
        ctx, n = self.ctx, self.ctx.settings.batch_size
        x_real, y_real = ctx.real_batch(n)
        y_fake = ctx.random_labels(n)
        with torch.no_grad(), ctx.strategy.autocast():
            x_fake = self.gen.infer(ctx.latents(self.gen.model, n), y_fake).float()
        x = torch.cat([x_fake, x_real])
        y = None if y_real is None else torch.cat([y_fake, y_real])
        sigma = self.schedule.sample(2 * n, ctx.device)
        with ctx.strategy.autocast():
            logits = self.ratio.forward(self.schedule.noise(x, sigma), sigma, y)
        lam = self.ratio_weight(sigma)
        loss = ratio_loss(logits[:n], logits[n:], lam[:n], lam[n:])
        self.ratio.backward(loss)
        out = self.ratio.step()
        return {"loss/ratio": loss.detach(), "ratio/accuracy": accuracy(logits[:n], logits[n:]).detach(),
                "ratio/logit_fake": logits[:n].detach().mean(), "ratio/logit_real": logits[n:].detach().mean(),
                "ratio/grad_norm": out["grad_norm"]}

    def generator_step(self, update: int) -> dict[str, Tensor]:
        """One generator step through the frozen ratio estimator (gradient flows through its input)."""
        ctx, n = self.ctx, self.ctx.settings.batch_size
        labels = ctx.random_labels(n)
        sigma = self.schedule.sample(n, ctx.device)
        # the estimator stays frozen through the backward pass too, where activation checkpointing
        # (backbone.activation_checkpointing) recomputes its blocks exactly as they ran forward
        with frozen(self.ratio.model):
            with ctx.strategy.autocast():
                x = self.gen.forward(ctx.latents(self.gen.model, n), labels)
                f = self.ratio.infer(self.schedule.noise(x.float(), sigma), sigma, labels)
            loss = generator_loss(f, self.divergence, self.generator_weight(sigma))
            self.gen.backward(loss)
        out = self.gen.step()
        self.update_ema(update)
        return {"loss/generator": loss.detach(), "generator/logit": f.detach().mean(),
                "generator/grad_norm": out["grad_norm"]}

    # ---- inference and state ----

    @classmethod
    def build_sampler(cls, config: Config, *, ctx: InferenceContext) -> GeneratorSampler:
        generator, ratio = ctx.build_generator(), ctx.build_ratio()
        return GeneratorSampler(generator, ratio, device=ctx.device, data_shape=ctx.data_shape,
                                num_labels=ctx.num_labels, autocast=ctx.strategy.autocast,
                                verifier_sigma=config.verifier_sigma)

    @classmethod
    def inference_weights(cls, state: Mapping[str, Any]) -> dict[str, dict[str, Tensor]]:
        return {**super().inference_weights(state), "ratio": state["ratio"]["model"]}

    def parameter_counts(self) -> dict[str, int]:
        return {"generator": count_parameters(self.gen.model), "ratio": count_parameters(self.ratio.model)}
