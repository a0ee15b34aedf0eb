"""Conformance of generators."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from diffratio.components import Generator
from diffratio.edm import EDMDenoiser
from diffratio.testing._networks import check_module_state, check_parameter_gradients, perturb_zero_parameters
from diffratio.testing._shared import Reporter, check_config, check_stored_config, names_component, seeded
from diffratio.testing.backbone import backbone_factory


@names_component("generator")
def check_generator(cls: type, config: Any = None, *, backbone: type | None = None, backbone_config: Any = None,
                    data_shape: Sequence[int] = (2,), num_labels: int = 0, sigma_data: float = 0.5,
                    batch_size: int = 3) -> None:
    """Built like the engine does, ``cls(config, denoiser=EDMDenoiser(backbone))`` (``TinyBackbone`` unless
    given): keeps that denoiser, maps latents to samples of the data shape, determinism, state_dict
    round trip, gradient flow to every parameter."""
    rep = Reporter("generator", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, Generator), "must derive from diffratio.Generator")
    config = check_config(cls, config, kind="generator")
    data_shape = tuple(data_shape)
    make_backbone = backbone_factory(backbone, backbone_config, data_shape, num_labels)

    def build() -> Generator:
        return cls(config, denoiser=EDMDenoiser(make_backbone("full"), sigma_data=sigma_data))

    with seeded(0):
        denoiser = EDMDenoiser(make_backbone("full"), sigma_data=sigma_data)
        gen = cls(config, denoiser=denoiser)
    check_stored_config(rep, gen, config)
    rep.require(isinstance(gen, nn.Module), "must be an nn.Module")
    rep.require(getattr(gen, "denoiser", None) is denoiser, "must keep the denoiser it was given as self.denoiser "
                "(methods load a pretrained denoiser's state dict into it)")
    latent = tuple(gen.latent_shape(data_shape))
    rep.require(all(isinstance(d, int) and d > 0 for d in latent), f"latent_shape gave {latent!r}")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(batch_size, *latent, generator=g)
    labels = torch.randint(num_labels, (batch_size,), generator=g) if num_labels else None
    gen.eval()
    with torch.no_grad():
        out = gen(z, labels)
    rep.shape(out, (batch_size, *data_shape), "generator(z) (batch, *data_shape)")
    rep.finite(out, "generator(z)")
    check_module_state(rep, build, lambda m: m(z, labels), "generator")
    perturb_zero_parameters(gen)
    gen(z, labels).pow(2).sum().backward()
    check_parameter_gradients(rep, gen, "generator gradient")


