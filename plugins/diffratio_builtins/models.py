"""Built-in generator and ratio estimator: an EDM one-step generator and an encoder-plus-head classifier."""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import torch
from torch import Tensor, nn

from diffratio import Backbone, Generator, RatioEstimator, append_dims
from diffratio.edm import EDMDenoiser, c_noise


class EDMGenerator(Generator):
    """``g(z) = D(sigma_init * z, sigma_init)``: one evaluation of an EDM denoiser (docs/method.md §4)."""

    @attrs.frozen(kw_only=True)
    class Config:
        sigma_init: float = attrs.field(default=2.5, validator=attrs.validators.gt(0))  # SiD 2.5; DMD 80

    def __init__(self, config: Config, *, denoiser: EDMDenoiser) -> None:
        nn.Module.__init__(self)
        self.config = config
        self.denoiser = denoiser

    def forward(self, z: Tensor, class_labels: Tensor | None = None) -> Tensor:
        sigma = torch.full((z.shape[0],), self.config.sigma_init, device=z.device, dtype=z.dtype)
        return self.denoiser(self.config.sigma_init * z, sigma, class_labels)


class ClassifierRatio(RatioEstimator):
    """Logit ``f = scale(sigma) * head(encoder(c_in(sigma) x, c_noise(sigma), labels))``.

    The encoder is a backbone in ``encoder`` mode (so it can start from a pretrained denoiser's weights);
    the head is linear, zero-initialised by default (f = 0 at start: a ratio warm-up is then required).
    """

    @attrs.frozen(kw_only=True)
    class Config:
        zero_init_head: bool = True  # start at f = 0 (ratio 1)
        output_scale: str = attrs.field(default="none", validator=attrs.validators.in_(("none", "inv_sigma")))
        # "inv_sigma": f = head(...) / sigma, matching how log ratios sharpen as sigma -> 0

    def __init__(self, config: Config, *, backbone: Backbone, sigma_data: float = 0.5) -> None:
        nn.Module.__init__(self)
        if backbone.mode != "encoder":
            raise ValueError("ClassifierRatio needs a backbone built in encoder mode")
        self.config = config
        self.sigma_data = float(sigma_data)
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, 1)
        if config.zero_init_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        sigma = sigma.to(x.dtype).reshape(-1).expand(x.shape[0])
        c_in = 1 / (append_dims(sigma, x.ndim) ** 2 + self.sigma_data**2).sqrt()
        feats = self.backbone(c_in * x, c_noise(sigma), class_labels)
        logit = self.head(feats.to(self.head.weight.dtype)).squeeze(-1).float()
        if self.config.output_scale == "inv_sigma":
            logit = logit / sigma.float()
        return logit

    def init_from_denoiser(self, state: Mapping[str, Tensor]) -> list[str]:
        """Copy ``backbone.*`` tensors of an EDM denoiser's state dict into the encoder, by name."""
        own = self.backbone.state_dict()
        missing = [k for k in own if f"backbone.{k}" not in state]
        wrong = [f"backbone.{k}: checkpoint {tuple(state[f'backbone.{k}'].shape)} vs model {tuple(v.shape)}"
                 for k, v in own.items() if f"backbone.{k}" in state and state[f"backbone.{k}"].shape != v.shape]
        if missing or wrong:
            lines = [*(f"missing in checkpoint: backbone.{k}" for k in missing[:10]), *wrong[:10]]
            raise ValueError("the pretrained denoiser does not match the ratio estimator's encoder "
                             "(same [backbone] settings as pretraining are required):\n  " + "\n  ".join(lines))
        self.backbone.load_state_dict({k: state[f"backbone.{k}"] for k in own})
        return [f"backbone.{k}" for k in own]
