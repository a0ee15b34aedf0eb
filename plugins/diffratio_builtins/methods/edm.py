"""EDM diffusion pretraining: the initialisation source of ``diffratio`` and the teacher of ``vsd``.

Denoising score matching of an EDM-preconditioned denoiser over the recipe's backbone (docs/concepts.md
section 6): ``lambda(sigma) ||D(x + sigma eps, sigma) - x||^2`` with sigma from the run's ``[schedule]``.
An EMA of the denoiser is kept; it is what ``sample`` uses (EDM Heun sampler) and what the checkpoint
exposes under ``denoiser_ema`` for ``diffratio.checkpoint.load_pretrained_denoiser``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

from diffratio import Method, OptimizerConfig, count_parameters
from diffratio.edm import heun_sample
from diffratio.losses import denoising_loss
from diffratio_builtins.methods.common import EmaWarmup, load_denoiser_weights, make_ema, scheduled_lrs, update_ema

_positive = attrs.validators.gt(0)


class EDM(Method):
    """Diffusion pretraining of ``EDMDenoiser(backbone)`` by denoising score matching (any data shape)."""

    uses = ("backbone", "schedule")

    @attrs.frozen(kw_only=True)
    class Config:
        optimizer: OptimizerConfig = OptimizerConfig(lr=1e-3, betas=(0.9, 0.999))  # Adam of the denoiser
        ema_decay: float = attrs.field(default=0.999, validator=[attrs.validators.ge(0), attrs.validators.lt(1)])
        # ^ decay of the denoiser's EMA (what samples, and what diffratio / vsd start from), warmed up early
        ema_warmup: EmaWarmup = "ramp"  # EMA decay warm-up: ramp, average or none (methods/common.py)
        sample_steps: int = attrs.field(default=18, validator=attrs.validators.ge(1))  # Heun: 2n-1 evaluations
        sigma_min: float = attrs.field(default=0.002, validator=_positive)  # of the sampler
        sigma_max: float = attrs.field(default=80.0, validator=_positive)  # of the sampler
        rho: float = attrs.field(default=7.0, validator=_positive)  # of the sampler's time steps
        init: str = ""  # continue from another edm run directory / checkpoint; "" = from scratch

    def __init__(self, config: Config, *, ctx: Any) -> None:
        super().__init__(config, ctx=ctx)
        if config.sigma_min >= config.sigma_max:
            raise ValueError(f"method.sigma_min ({config.sigma_min}) must be below method.sigma_max "
                             f"({config.sigma_max})")
        denoiser = ctx.build_denoiser()
        if config.init:
            load_denoiser_weights(config.init, denoiser, "denoiser")
        self.schedule = ctx.build_schedule()
        self.net = ctx.strategy.prepare("denoiser", denoiser, config.optimizer)
        self.ema = make_ema(self.net.raw)

    def train_step(self, step: int) -> dict[str, Tensor | float]:
        ctx, n = self.ctx, self.ctx.settings.batch_size
        lrs = scheduled_lrs(step, ctx.settings.steps, denoiser=self.net)
        x, labels = ctx.real_batch(n)
        x = x.float()
        sigma = self.schedule.sample(n, ctx.device)
        with ctx.strategy.autocast():
            denoised = self.net.module(self.schedule.noise(x, sigma), sigma, labels)
        loss = denoising_loss(denoised.float(), x, sigma, self.net.raw.sigma_data)
        self.net.backward(loss)
        out = self.net.step()
        if self.net.last_step_ok:  # false when the update was skipped (non-finite loss or gradients)
            update_ema(self.ema, self.net.raw, self.config.ema_decay, step, self.config.ema_warmup)
        return {"loss/denoising": loss.detach(), **{f"denoiser/{k}": v for k, v in out.items()}, **lrs}

    @torch.no_grad()
    def sample(self, n: int, class_labels: Tensor | None = None) -> Tensor:
        """EDM Heun sampling with the EMA denoiser (``2 * sample_steps - 1`` evaluations per sample)."""
        c, ctx = self.config, self.ctx
        labels = class_labels if class_labels is not None else ctx.random_labels(n)
        noise = torch.randn(n, *ctx.data_shape, device=ctx.device)
        # full precision: the last steps resolve noise far below bf16's resolution
        x = heun_sample(self.ema, noise, labels, num_steps=c.sample_steps, sigma_min=c.sigma_min,
                        sigma_max=c.sigma_max, rho=c.rho)
        return x.float()

    def parameter_counts(self) -> dict[str, int]:
        return {"denoiser": count_parameters(self.net.raw)}

    def state_dict(self) -> dict[str, Any]:
        # "denoiser_ema" is the plain EDMDenoiser state dict that load_pretrained_denoiser returns
        return {"model": self.net.state_dict(), "denoiser_ema": self.ema.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        self.ema.load_state_dict(state["denoiser_ema"])
