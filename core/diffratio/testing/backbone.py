"""Conformance of backbones, and ``TinyBackbone``, the small body the generator and ratio checks use."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from diffratio.components import Backbone
from diffratio.config import setting
from diffratio.edm import c_noise
from diffratio.testing._networks import check_module_state, check_parameter_gradients, inputs, perturb_zero_parameters
from diffratio.testing._shared import Reporter, check_config, check_stored_config, names_component, seeded


class TinyBackbone(Backbone):
    """Two tanh layers over the flattened sample: the default body of the generator and ratio checks.

    ``full`` mode ends in a zero-initialised linear layer; ``encoder`` mode returns the hidden layer.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        hidden: int = setting(16, "width of both hidden layers", gt=0)

    def __init__(self, config: Config, *, data_shape: tuple[int, ...], num_labels: int = 0,
                 mode: str = "full") -> None:
        super().__init__(config, data_shape=data_shape, num_labels=num_labels, mode=mode)
        d, w = math.prod(self.data_shape), config.hidden
        self.inp = nn.Linear(d + 1, w)
        self.label_embed = nn.Embedding(num_labels, w) if num_labels else None
        self.mid = nn.Linear(w, w)
        if mode == "full":
            self.out = nn.Linear(w, d)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    @property
    def feature_dim(self) -> int:
        return self.config.hidden

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        h = self.inp(torch.cat([x.flatten(1), noise_labels.to(x.dtype)[:, None]], dim=1))
        lab = self.embed_labels(self.label_embed, class_labels)
        if lab is not None:
            h = h + lab
        h = torch.tanh(self.mid(torch.tanh(h)))
        return h if self.mode == "encoder" else self.out(h).reshape(x.shape)


@names_component("backbone")
def check_backbone(cls: type, config: Any = None, *, data_shape: Sequence[int] = (2,), num_labels: int = 0,
                   batch_size: int = 3, encoder: bool = True) -> None:
    """Shapes, determinism, state_dict round trip and gradient flow in ``full`` and (unless
    ``encoder=False``) ``encoder`` mode; encoder tensors are a subset of full mode's by name and shape."""
    rep = Reporter("backbone", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, Backbone), "must derive from diffratio.Backbone")
    config = check_config(cls, config, kind="backbone")
    data_shape = tuple(data_shape)
    x, sigma, labels = inputs(data_shape, num_labels, batch_size)
    noise_labels = c_noise(sigma)
    states: dict[str, dict[str, Tensor]] = {}
    for mode in ("full", "encoder") if encoder else ("full",):
        def build(mode: str = mode) -> Backbone:
            return cls(config, data_shape=data_shape, num_labels=num_labels, mode=mode)

        what = f"{mode} mode, data_shape {data_shape}, num_labels {num_labels}"
        with seeded(0):
            try:
                net = build()
            except Exception as exc:
                rep.fail(f"building in {what} fails: {type(exc).__name__}: {exc}")
        check_stored_config(rep, net, config)
        rep.require(net.mode == mode and tuple(net.data_shape) == data_shape and net.num_labels == num_labels,
                    f"{what}: call Backbone.__init__ with the derived arguments (mode, data_shape, num_labels)")
        net.eval()
        with torch.no_grad():
            out = net(x, noise_labels, labels)
        if mode == "full":
            rep.shape(out, x.shape, f"output in {what}")
        else:
            dim = net.feature_dim
            rep.require(isinstance(dim, int) and dim > 0, f"feature_dim must be a positive int, got {dim!r}")
            rep.shape(out, (batch_size, dim), f"output in {what} (batch, feature_dim)")
        rep.finite(out, f"output in {what}")
        check_module_state(rep, build, lambda m: m(x, noise_labels, labels), what)

        perturb_zero_parameters(net)
        xg = x.clone().requires_grad_(True)
        out = net(xg, noise_labels, labels)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        check_parameter_gradients(rep, net, f"gradient in {what}")
        rep.require(xg.grad is not None and bool(torch.isfinite(xg.grad).all()) and bool(xg.grad.ne(0).any()),
                    f"gradient in {what}: the input receives no finite, non-zero gradient")
        states[mode] = {k: v for k, v in net.state_dict().items()}
    if encoder:
        full, enc = states["full"], states["encoder"]
        extra = sorted(set(enc) - set(full))
        rep.require(not extra, f"encoder tensors missing in full mode (names must match, so that a ratio estimator "
                               f"loads a pretrained denoiser's weights): {extra[:10]}")
        shapes = [f"{k}: encoder {tuple(enc[k].shape)} vs full {tuple(full[k].shape)}"
                  for k in enc if enc[k].shape != full[k].shape]
        rep.require(not shapes, f"encoder and full mode differ in shape: {shapes[:10]}")


def backbone_factory(backbone: type | None, backbone_config: Any, data_shape: tuple[int, ...],
                      num_labels: int) -> Callable[[str], Backbone]:
    bcls = backbone or TinyBackbone
    bcfg = backbone_config if backbone_config is not None else bcls.Config()

    def build(mode: str) -> Backbone:
        return bcls(bcfg, data_shape=data_shape, num_labels=num_labels, mode=mode)

    return build


