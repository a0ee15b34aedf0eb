"""Conformance of ratio estimators."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from diffratio.components import RatioEstimator
from diffratio.edm import EDMDenoiser
from diffratio.testing._networks import (
    SIGMAS,
    check_module_state,
    check_parameter_gradients,
    inputs,
    perturb_zero_parameters,
)
from diffratio.testing._shared import Reporter, check_config, check_stored_config, names_component, seeded
from diffratio.testing.backbone import backbone_factory


@names_component("ratio")
def check_ratio(cls: type, config: Any = None, *, backbone: type | None = None, backbone_config: Any = None,
                data_shape: Sequence[int] = (2,), num_labels: int = 0, sigma_data: float = 0.5,
                batch_size: int = 4) -> None:
    """Built like the engine does, ``cls(config, backbone=<encoder>, sigma_data=...)``: logits of shape (B,)
    for sigma in [0.002, 80], determinism, state_dict round trip, gradients to every parameter and to the
    input (also with the parameters frozen), and ``init_from_denoiser`` if implemented."""
    rep = Reporter("ratio", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, RatioEstimator),
                "must derive from diffratio.RatioEstimator")
    config = check_config(cls, config, kind="ratio")
    data_shape = tuple(data_shape)
    make_backbone = backbone_factory(backbone, backbone_config, data_shape, num_labels)

    def build() -> RatioEstimator:
        return cls(config, backbone=make_backbone("encoder"), sigma_data=sigma_data)

    with seeded(0):
        ratio = build()
    check_stored_config(rep, ratio, config)
    x, sigma, labels = inputs(data_shape, num_labels, batch_size)
    ratio.eval()
    with torch.no_grad():
        f = ratio(x, sigma, labels)
    rep.shape(f, (batch_size,), "logits (batch,)")
    rep.finite(f, f"logits at sigma {SIGMAS}")
    check_module_state(rep, build, lambda m: m(x, sigma, labels), "ratio estimator")

    perturb_zero_parameters(ratio)
    xg = x.clone().requires_grad_(True)
    ratio(xg, sigma, labels).sum().backward()
    check_parameter_gradients(rep, ratio, "ratio gradient")
    # the generator step: parameters frozen, the gradient must still reach the samples
    ratio.requires_grad_(False)
    xg = x.clone().requires_grad_(True)
    try:
        (gx,) = torch.autograd.grad(ratio(xg, sigma, labels).sum(), xg)
    except RuntimeError as exc:
        rep.fail(f"no gradient reaches the input with the parameters frozen: {exc}")
    rep.finite(gx, "gradient of the logits with respect to the input")
    per_sample = gx.flatten(1).norm(dim=1)
    rep.require(bool((per_sample > 0).all()),
                lambda: f"the logit's input gradient is zero for samples at sigma {sigma[per_sample == 0].tolist()}")
    ratio.requires_grad_(True)

    with seeded(2):
        denoiser = EDMDenoiser(make_backbone("full"), sigma_data=sigma_data)
    perturb_zero_parameters(denoiser, seed=3)
    state = denoiser.state_dict()
    try:
        names = ratio.init_from_denoiser(state)
    except NotImplementedError:
        return  # allowed: such an estimator cannot start from a pretrained denoiser
    rep.require(isinstance(names, list) and names and all(isinstance(n, str) for n in names),
                "init_from_denoiser must return the (non-empty) list of tensor names it loaded")
    unknown = [n for n in names if n not in state]
    rep.require(not unknown, f"init_from_denoiser reports names the denoiser does not have: {unknown[:10]}")
    own = ratio.state_dict()
    differ = [n for n in names if n in own and not torch.equal(own[n], state[n])]
    rep.require(not differ, f"init_from_denoiser reports {differ[:10]} loaded, but they differ from the denoiser's")


