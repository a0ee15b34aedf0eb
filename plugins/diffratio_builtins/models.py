"""Built-in generator and ratio estimator: an EDM one-step generator and an encoder-plus-head classifier."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import attrs
import torch
from torch import Tensor, nn

from diffratio import Backbone, Generator, RatioEstimator, append_dims
from diffratio.config import setting
from diffratio.edm import EDMDenoiser, c_noise


class EDMGenerator(Generator):
    """``g(z) = D(sigma_init * z, sigma_init)``: one evaluation of an EDM denoiser (docs/concepts.md section 4)."""

    @attrs.frozen(kw_only=True)
    class Config:
        sigma_init: float = setting(2.5, "noise level the generator denoises from (SiD 2.5; DMD 80)", gt=0)

    def __init__(self, config: Config, *, denoiser: EDMDenoiser) -> None:
        nn.Module.__init__(self)
        self.config = config
        self.denoiser = denoiser

    def forward(self, z: Tensor, class_labels: Tensor | None = None) -> Tensor:
        sigma = torch.full((z.shape[0],), self.config.sigma_init, device=z.device, dtype=z.dtype)
        return self.denoiser(self.config.sigma_init * z, sigma, class_labels)


class ClassifierRatio(RatioEstimator):
    """Logit ``f(x, sigma)`` from a backbone encoder's features of ``c_in(sigma) x`` (and the labels).

    The encoder is a backbone in ``encoder`` mode (so it can start from a pretrained denoiser's weights);
    the head is zero-initialised by default (f = 0 at start: a ratio warm-up is then required). Forms:

    - ``logit_form = "linear"``: ``f = scale(sigma) * head(features)`` (one scalar per sample).
    - ``logit_form = "energy"``: the head gives two points ``A, B`` in data space (data units) and
      ``f = scale(sigma) * (|x - A|^2 - |x - B|^2) / (2 sigma^2)``, a difference of two Gaussian-like
      energies, so ``grad_x f ~ (B - A) / sigma^2`` has the shape of a denoiser difference (the structure
      of VSD's score difference) and its size follows the separation of the classes even where the
      logistic loss saturates. The head maps pooled features to ``2 * prod(data_shape)`` numbers: meant
      for low-dimensional data.

    ``scale(sigma)``: ``none`` = 1; ``inv_sigma`` = 1 / sigma; ``inv_sigma2`` =
    ``sigma_data * sqrt(sigma^2 + sigma_data^2) / sigma^2``, which with ``c_in`` makes
    ``sigma^2 grad_x f = sigma_data * grad_{c_in x} head``: the head's input gradient is in data units,
    like a denoiser difference. ``head_hidden > 0`` puts a SiLU hidden layer of that width in the head.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        zero_init_head: bool = setting(True, "start at f = 0 (ratio 1)")
        output_scale: Literal["none", "inv_sigma", "inv_sigma2"] = setting("none", "scale(sigma) of the logit "
                                                                                   "(see the class docstring)")
        logit_form: Literal["linear", "energy"] = setting("linear", "linear: one scalar from the head; energy: "
                                                                    "difference of two energies")
        head_hidden: int = setting(0, "width of a SiLU hidden layer in the head; 0 = linear head", ge=0)

    def __init__(self, config: Config, *, backbone: Backbone, sigma_data: float = 0.5) -> None:
        nn.Module.__init__(self)
        if backbone.mode != "encoder":
            raise ValueError("ClassifierRatio needs a backbone built in encoder mode")
        self.config = config
        self.sigma_data = float(sigma_data)
        self.backbone = backbone
        self.data_shape = tuple(backbone.data_shape)
        out = 1 if config.logit_form == "linear" else 2 * math.prod(self.data_shape)
        last = nn.Linear(config.head_hidden or backbone.feature_dim, out)
        self.head = last if not config.head_hidden else nn.Sequential(
            nn.Linear(backbone.feature_dim, config.head_hidden), nn.SiLU(), last)
        if config.zero_init_head:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def scale(self, sigma: Tensor) -> Tensor | None:
        """``scale(sigma)`` of the logit, or None for 1."""
        kind, sd = self.config.output_scale, self.sigma_data
        if kind == "inv_sigma":
            return 1 / sigma
        if kind == "inv_sigma2":
            return sd * (sigma**2 + sd**2).sqrt() / sigma**2
        return None

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        sigma = sigma.to(x.dtype).reshape(-1).expand(x.shape[0])
        c_in = 1 / (append_dims(sigma, x.ndim) ** 2 + self.sigma_data**2).sqrt()
        feats = self.backbone(c_in * x, c_noise(sigma), class_labels)
        out = self.head(feats.to(next(self.head.parameters()).dtype)).float()
        if self.config.logit_form == "energy":
            sf = sigma.float()
            xf = x.float().flatten(1)
            a, b = (self.sigma_data * out).chunk(2, dim=1)
            logit = (((xf - a) ** 2).sum(1) - ((xf - b) ** 2).sum(1)) / (2 * sf**2)
        else:
            logit = out.squeeze(-1)
        scale = self.scale(sigma.float())
        return logit if scale is None else logit * scale

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
