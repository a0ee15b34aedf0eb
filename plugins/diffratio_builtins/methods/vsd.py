"""VSD / Diff-Instruct / DMD: the teacher-supervised baseline DiffRatio is compared with.

docs/concepts.md section 7. A frozen teacher denoiser ``D_phi`` (pretrained by ``edm``), a fake-score
denoiser ``D_psi`` initialised from the teacher and trained by denoising score matching on generated
samples (``fake_steps`` per generator step), and a one-step generator (initialised from the teacher)
driven by the reverse-KL gradient ``w(sigma) (s_psi - s_phi)^T d x_sigma / d theta``. Three full
networks, two sources of bias (teacher error and fake-score error).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

from diffratio import DiffRatioError, Method, OptimizerConfig, append_dims, count_parameters
from diffratio.losses import denoising_loss
from diffratio_builtins.methods.common import EmaWarmup, load_denoiser_weights, make_ema, scheduled_lrs, update_ema

Denoiser = Callable[..., Tensor]


def _fp32_or_wider(x: Tensor) -> Tensor:
    """Leave float32/float64 alone; lift bf16/fp16 (autocast outputs) to float32."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def score_difference(fake: Denoiser, teacher: Denoiser, x_sigma: Tensor, sigma: Tensor,
                     class_labels: Tensor | None = None) -> Tensor:
    """``s_fake - s_teacher = (D_fake(x) - D_teacher(x)) / sigma^2`` at ``x_sigma``, without gradients.

    Taking the difference of the denoisers first avoids cancelling the two ``-x / sigma^2`` terms.
    """
    with torch.no_grad():
        d = _fp32_or_wider(fake(x_sigma, sigma, class_labels)) - _fp32_or_wider(teacher(x_sigma, sigma, class_labels))
    return d / append_dims(sigma.to(d.dtype), x_sigma.ndim) ** 2


def vsd_generator_loss(x_sigma: Tensor, score_diff: Tensor, weight: Tensor) -> Tensor:
    """Surrogate ``E[w(sigma) * sg(s_fake - s_teacher) . x_sigma(theta)]``.

    Its gradient with respect to the generator is ``E[w (s_fake - s_teacher)^T d x_sigma / d theta]``,
    the reverse-KL (diffusive KL) gradient when both scores are exact; the scale matches ``diffratio``'s
    surrogate ``w h(f) f`` whose input gradient is the same score difference.
    """
    per_sample = (score_diff.detach() * _fp32_or_wider(x_sigma)).flatten(1).sum(1)
    return (weight * per_sample).mean()


class VSD(Method):
    """Variational score distillation of a one-step generator from a pretrained ``edm`` teacher."""

    uses = ("backbone", "generator", "schedule")

    @attrs.frozen(kw_only=True)
    class Config:
        init: str  # edm run directory / checkpoint: the teacher, and the start of the fake score and generator
        generator_optimizer: OptimizerConfig = OptimizerConfig(lr=3e-5)  # Adam of the one-step generator
        fake_optimizer: OptimizerConfig = OptimizerConfig(lr=1e-4)  # Adam of the fake-score denoiser
        fake_steps: int = attrs.field(default=1, validator=attrs.validators.ge(1))  # per generator step
        warmup_fake_steps: int = attrs.field(default=0, validator=attrs.validators.ge(0))  # before step 1
        ema_decay: float = attrs.field(default=0.999, validator=[attrs.validators.ge(0), attrs.validators.lt(1)])
        # ^ decay of the generator's EMA (the weights that sample and are evaluated), warmed up early
        ema_warmup: EmaWarmup = "ramp"  # EMA decay warm-up: ramp, average or none (methods/common.py)

    def __init__(self, config: Config, *, ctx: Any) -> None:
        super().__init__(config, ctx=ctx)
        generator = ctx.build_generator()
        teacher = ctx.build_denoiser()
        # init = "" only when a finished run is rebuilt for sampling (diffratio.sampling): the
        # checkpoint then supplies generator and fake score, and the teacher is never used.
        self.teacher_loaded = bool(config.init)
        if config.init:
            load_denoiser_weights(config.init, teacher, "teacher")
            generator.denoiser.load_state_dict(teacher.state_dict())
        fake = copy.deepcopy(teacher)
        self.teacher = ctx.strategy.prepare_frozen(teacher)  # compiled or in bf16 like the trained models
        self.schedule = ctx.build_schedule()
        self.gen = ctx.strategy.prepare("generator", generator, config.generator_optimizer)
        self.fake = ctx.strategy.prepare("fake", fake, config.fake_optimizer)
        self.ema = make_ema(self.gen.raw)
        self.warmed_up = config.warmup_fake_steps == 0

    # ---- the two steps ----

    def fake_step(self) -> dict[str, Tensor]:
        """Denoising score matching of the fake score on detached generated samples."""
        ctx, n = self.ctx, self.ctx.settings.batch_size
        labels = ctx.random_labels(n)
        with torch.no_grad(), ctx.strategy.autocast():
            x = self.gen.raw(ctx.latents(self.gen.raw, n), labels).float()
        sigma = self.schedule.sample(n, ctx.device)
        with ctx.strategy.autocast():
            denoised = self.fake.module(self.schedule.noise(x, sigma), sigma, labels)
        loss = denoising_loss(denoised.float(), x, sigma, self.fake.raw.sigma_data)
        self.fake.backward(loss)
        out = self.fake.step()
        return {"loss/fake": loss.detach(), "fake/grad_norm": out["grad_norm"]}

    def generator_step(self, step: int) -> dict[str, Tensor]:
        """One generator step on the surrogate whose gradient is ``w (s_fake - s_teacher) dx_sigma/dtheta``."""
        ctx, n = self.ctx, self.ctx.settings.batch_size
        labels = ctx.random_labels(n)
        sigma = self.schedule.sample(n, ctx.device)
        with ctx.strategy.autocast():
            x = self.gen.module(ctx.latents(self.gen.raw, n), labels)
            x_sigma = self.schedule.noise(x.float(), sigma)
            diff = score_difference(self.fake.forward_only, self.teacher, x_sigma.detach(), sigma, labels)
        weight = self.schedule.generator_weight(sigma)
        loss = vsd_generator_loss(x_sigma, diff, weight)
        self.gen.backward(loss)
        out = self.gen.step()
        if self.gen.last_step_ok:  # false when the update was skipped (non-finite loss or gradients)
            update_ema(self.ema, self.gen.raw, self.config.ema_decay, step, self.config.ema_warmup)
        # sigma^2 |s_fake - s_teacher| is the denoiser difference, in data units
        gap = (diff * append_dims(sigma, diff.ndim) ** 2).flatten(1).norm(dim=1).mean()
        return {"loss/generator": loss.detach(), "generator/denoiser_gap": gap, "generator/grad_norm": out["grad_norm"]}

    def train_step(self, step: int) -> dict[str, Tensor | float]:
        if not self.teacher_loaded:
            raise DiffRatioError("the vsd method needs method.init: the run directory of an `edm` "
                                 "pretraining (its EMA denoiser is the teacher)")
        lrs = scheduled_lrs(step, self.ctx.settings.steps, generator=self.gen, fake=self.fake)
        if not self.warmed_up:
            for _ in range(self.config.warmup_fake_steps):
                self.fake_step()
            self.warmed_up = True
        for _ in range(self.config.fake_steps):
            scalars = self.fake_step()
        return {**scalars, **self.generator_step(step), **lrs}

    # ---- sampling and state ----

    @torch.no_grad()
    def sample(self, n: int, class_labels: Tensor | None = None) -> Tensor:
        labels = class_labels if class_labels is not None else self.ctx.random_labels(n)
        with self.ctx.strategy.autocast():
            return self.ema(self.ctx.latents(self.ema, n), labels).float()

    def parameter_counts(self) -> dict[str, int]:
        return {"generator": count_parameters(self.gen.raw), "fake_score": count_parameters(self.fake.raw),
                "teacher": sum(p.numel() for p in self.teacher.parameters())}

    def state_dict(self) -> dict[str, Any]:
        # the frozen teacher is not stored: it is reloaded from method.init on resume
        return {"generator": self.gen.state_dict(), "fake": self.fake.state_dict(),
                "generator_ema": self.ema.state_dict(), "warmed_up": self.warmed_up}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.gen.load_state_dict(state["generator"])
        self.fake.load_state_dict(state["fake"])
        self.ema.load_state_dict(state["generator_ema"])
        self.warmed_up = bool(state["warmed_up"])
