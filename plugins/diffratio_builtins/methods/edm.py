"""EDM diffusion pretraining: the initialisation source of ``diffratio`` and the teacher of ``vsd``.

Denoising score matching of an EDM-preconditioned denoiser over the recipe's backbone (docs/concepts.md
section 6): ``lambda(sigma) ||D(x + sigma eps, sigma) - x||^2`` with sigma from the run's ``[schedule]``.
An EMA of the denoiser is kept: it samples (EDM Heun sampler), and it is the pretrained denoiser the
method offers other methods (``pretrained_denoiser``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import Tensor, nn

from diffratio import Method, OptimizerConfig, Sampler, count_parameters
from diffratio.config import empty_is_none, setting
from diffratio.edm import heun_sample
from diffratio.losses import denoising_loss
from diffratio_builtins.methods.common import EmaWarmup, load_denoiser_weights, make_ema, scheduled_lrs, update_ema

if TYPE_CHECKING:
    from diffratio.engine import RunContext
    from diffratio.inference import InferenceContext


class HeunSampler(Sampler):
    """EDM Heun sampling with a denoiser (``2 * sample_steps - 1`` evaluations per sample), in full precision:
    the last steps resolve noise far below bf16's resolution."""

    def __init__(self, denoiser: nn.Module, config: EDM.Config, *, device: torch.device,
                 data_shape: tuple[int, ...], num_labels: int) -> None:
        self.denoiser = denoiser
        self.config = config
        self.device = device
        self.data_shape = tuple(data_shape)
        self.num_labels = num_labels

    @torch.no_grad()
    def sample(self, n: int, class_labels: Tensor | None = None) -> Tensor:
        c = self.config
        labels = class_labels
        if labels is None and self.num_labels:
            labels = torch.randint(self.num_labels, (n,), device=self.device)
        noise = torch.randn(n, *self.data_shape, device=self.device)
        x = heun_sample(self.denoiser, noise, labels, num_steps=c.sample_steps, sigma_min=c.sigma_min,
                        sigma_max=c.sigma_max, rho=c.rho)
        return x.float()

    def networks(self) -> dict[str, nn.Module]:
        return {"denoiser": self.denoiser}


class EDM(Method):
    """Diffusion pretraining of ``EDMDenoiser(backbone)`` by denoising score matching (any data shape)."""

    uses = ("backbone", "schedule")

    @attrs.frozen(kw_only=True)
    class Config:
        optimizer: OptimizerConfig = setting(OptimizerConfig(lr=1e-3, betas=(0.9, 0.999)), "Adam of the denoiser")
        ema_decay: float = setting(0.999, "decay of the denoiser's EMA (what samples, and what diffratio / vsd "
                                          "start from), warmed up early", ge=0, lt=1)
        ema_warmup: EmaWarmup = setting("ramp", "EMA decay warm-up: ramp, average or none (methods/common.py)")
        sample_steps: int = setting(18, "Heun sampler steps: 2n-1 evaluations", ge=1)
        sigma_min: float = setting(0.002, "lowest noise level of the sampler", gt=0)
        sigma_max: float = setting(80.0, "highest noise level of the sampler", gt=0)
        rho: float = setting(7.0, "exponent of the sampler's time steps", gt=0)
        init: str | None = setting(None, 'continue from another edm run directory / checkpoint; unset (or "") = '
                                         "from scratch", converter=empty_is_none)

    def __init__(self, config: Config, *, ctx: RunContext) -> None:
        super().__init__(config, ctx=ctx)
        if config.sigma_min >= config.sigma_max:
            raise ValueError(f"method.sigma_min ({config.sigma_min}) must be below method.sigma_max "
                             f"({config.sigma_max})")
        denoiser = ctx.build_denoiser()
        if config.init is not None:
            load_denoiser_weights(config.init, denoiser, "denoiser", ctx.registry)
        self.schedule = ctx.build_schedule()
        self.net = ctx.strategy.prepare("denoiser", denoiser, config.optimizer)
        self.ema = make_ema(self.net.model)
        self.sampler = HeunSampler(self.ema, config, device=ctx.device, data_shape=ctx.data_shape,
                                   num_labels=ctx.num_labels)

    def train_step(self, step: int) -> dict[str, Tensor]:
        ctx, n = self.ctx, self.ctx.settings.batch_size
        lrs = scheduled_lrs(step, ctx.settings.steps, ctx.device, denoiser=self.net)
        x, labels = ctx.real_batch(n)
        x = x.float()
        sigma = self.schedule.sample(n, ctx.device)
        with ctx.strategy.autocast():
            denoised = self.net.forward(self.schedule.noise(x, sigma), sigma, labels)
        loss = denoising_loss(denoised.float(), x, sigma, self.net.model.sigma_data)
        self.net.backward(loss)
        out = self.net.step()
        update_ema(self.ema, self.net.model, self.config.ema_decay, step, self.config.ema_warmup,
                   applied=self.net.last_step_ok)
        return {"loss/denoising": loss.detach(), **{f"denoiser/{k}": v for k, v in out.items()}, **lrs}

    @classmethod
    def build_sampler(cls, config: Config, *, ctx: InferenceContext) -> HeunSampler:
        return HeunSampler(ctx.build_denoiser(), config, device=ctx.device, data_shape=ctx.data_shape,
                           num_labels=ctx.num_labels)

    @classmethod
    def inference_weights(cls, state: Mapping[str, Any]) -> dict[str, dict[str, Tensor]]:
        return {"denoiser": state["denoiser_ema"]}

    @classmethod
    def pretrained_denoiser(cls, weights: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Tensor]:
        return dict(weights["denoiser"])

    def parameter_counts(self) -> dict[str, int]:
        return {"denoiser": count_parameters(self.net.model)}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.net.state_dict(), "denoiser_ema": self.ema.state_dict(), "data": self.data_info()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        self.ema.load_state_dict(state["denoiser_ema"])
