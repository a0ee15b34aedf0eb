"""VSD / Diff-Instruct / DMD: the teacher-supervised baseline DiffRatio is compared with.

docs/concepts.md section 7. A frozen teacher denoiser ``D_phi`` (pretrained by ``edm``), a fake-score
denoiser ``D_psi`` initialised from the teacher and trained by denoising score matching on generated
samples (``fake_steps`` per generator step), and a one-step generator (initialised from the teacher)
driven by the reverse-KL gradient ``w(sigma) (s_psi - s_phi)^T d x_sigma / d theta``. Three full
networks, two sources of bias (teacher error and fake-score error).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import torch
from torch import Tensor

from diffratio import DiffRatioError, OptimizerConfig, Trainable, append_dims, count_parameters
from diffratio.config import setting
from diffratio.losses import denoising_loss
from diffratio_builtins.methods.common import load_denoiser_weights
from diffratio_builtins.methods.onestep import OneStepConfig, OneStepMethod

if TYPE_CHECKING:
    from diffratio.engine import RunContext

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


class VSD(OneStepMethod):
    """Variational score distillation of a one-step generator from a pretrained ``edm`` teacher."""

    uses = ("backbone", "generator", "schedule")
    aux_name = "fake"

    @attrs.frozen(kw_only=True)
    class Config(OneStepConfig):
        init: str = setting(doc="edm run directory / checkpoint: the teacher, and the start of the fake score "
                                "and generator")
        fake_optimizer: OptimizerConfig = setting(OptimizerConfig(lr=1e-4), "Adam of the fake-score denoiser")
        fake_steps: int = setting(1, "fake-score updates per generator update", ge=1)
        warmup_fake_steps: int = setting(0, "fake-score updates before the first generator update, one per step "
                                            "of the loop", ge=0)

    def __init__(self, config: Config, *, ctx: RunContext) -> None:
        if not config.init:
            raise DiffRatioError("the vsd method needs method.init: the run directory of an `edm` pretraining "
                                 "(its EMA denoiser is the teacher)")
        generator = ctx.build_generator()
        teacher = ctx.build_denoiser()
        load_denoiser_weights(config.init, teacher, "teacher", ctx.registry)
        generator.denoiser.load_state_dict(teacher.state_dict())
        fake = copy.deepcopy(teacher)
        self.teacher = ctx.strategy.prepare_frozen(teacher)  # compiled or in bf16 like the trained models
        super().__init__(config, ctx=ctx, generator=generator, aux=fake)

    @property
    def fake(self) -> Trainable:
        """The fake-score denoiser as trained (``aux``)."""
        return self.aux

    @property
    def aux_optimizer(self) -> OptimizerConfig:
        return self.config.fake_optimizer

    @property
    def aux_steps(self) -> int:
        return self.config.fake_steps

    @property
    def warmup_steps(self) -> int:
        return self.config.warmup_fake_steps

    # ---- the two steps ----

    def aux_step(self) -> dict[str, Tensor]:
        """Denoising score matching of the fake score on detached generated samples."""
        ctx, n = self.ctx, self.ctx.settings.batch_size
        labels = ctx.random_labels(n)
        with torch.no_grad(), ctx.strategy.autocast():
            x = self.gen.infer(ctx.latents(self.gen.model, n), labels).float()
        sigma = self.schedule.sample(n, ctx.device)
        with ctx.strategy.autocast():
            denoised = self.fake.forward(self.schedule.noise(x, sigma), sigma, labels)
        loss = denoising_loss(denoised.float(), x, sigma, self.fake.model.sigma_data)
        self.fake.backward(loss)
        out = self.fake.step()
        return {"loss/fake": loss.detach(), "fake/grad_norm": out["grad_norm"]}

    def generator_step(self, update: int) -> dict[str, Tensor]:
        """One generator step on the surrogate whose gradient is ``w (s_fake - s_teacher) dx_sigma/dtheta``."""
        ctx, n = self.ctx, self.ctx.settings.batch_size
        labels = ctx.random_labels(n)
        sigma = self.schedule.sample(n, ctx.device)
        with ctx.strategy.autocast():
            x = self.gen.forward(ctx.latents(self.gen.model, n), labels)
            x_sigma = self.schedule.noise(x.float(), sigma)
            diff = score_difference(self.fake.infer, self.teacher, x_sigma.detach(), sigma, labels)
        loss = vsd_generator_loss(x_sigma, diff, self.generator_weight(sigma))
        self.gen.backward(loss)
        out = self.gen.step()
        self.update_ema(update)
        # sigma^2 |s_fake - s_teacher| is the denoiser difference, in data units
        gap = (diff * append_dims(sigma, diff.ndim) ** 2).flatten(1).norm(dim=1).mean()
        return {"loss/generator": loss.detach(), "generator/denoiser_gap": gap, "generator/grad_norm": out["grad_norm"]}

    def parameter_counts(self) -> dict[str, int]:
        return {"generator": count_parameters(self.gen.model), "fake_score": count_parameters(self.fake.model),
                "teacher": sum(p.numel() for p in self.teacher.parameters())}
