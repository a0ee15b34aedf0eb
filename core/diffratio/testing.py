"""Conformance checks that every component must pass, for plugin authors and the project's own tests.

Call them from pytest; each raises ``ConformanceError`` (an ``AssertionError``) whose message names the
component and what is wrong::

    from diffratio.testing import check_backbone, check_component, check_divergence

    def test_my_divergence() -> None:
        check_divergence(MyDivergence)

    def test_my_backbone() -> None:
        check_backbone(MyBackbone, data_shape=(2,), config=MyBackbone.Config(width=16))

    def test_by_kind() -> None:
        check_component("divergence", MyDivergence)

What is checked, for every kind: the nested ``Config`` is a frozen, kw_only attrs class whose fields all
have types, built with its defaults (or the ``config`` given, when a field is required), and it survives
``diffratio.recipe.converter`` unstructure -> JSON -> structure unchanged (what a recipe and run.json do);
the component stores its config as ``self.config``. Per kind:

- divergence: ``weight(f) = r^2 F''(r)`` with ``r = exp(-f)`` (second derivative of ``F`` by autograd in
  float64) at several ``f``; ``F(1) = 0``; weights elementwise, finite and >= 0 for ``f`` in [-20, 20].
- schedule: sigma > 0, finite, shape (n,), the same under the same seed; both loss weights finite, >= 0.
- backbone (full and encoder mode): output shapes, state_dict round trip, the same parameters and output
  under the same seed, finite gradients reaching every parameter (after giving zero-initialised layers
  small random values, since a zero output layer blocks the gradient to everything before it), encoder
  tensors a subset of full mode's by name with equal shapes.
- generator / ratio estimator (over a small backbone): shapes, state_dict round trip, determinism,
  gradient flow; the ratio's logit has finite, non-zero gradients with respect to its input, also with
  its parameters frozen (as in the generator step); ``init_from_denoiser`` copies what it reports.
- dataset: shapes, dtypes, labels in range, finite values, the same data for the same config.
- metric: finite named values, the same under the same seed.
- strategy: a prepared model trains, a step with a non-finite loss is skipped, and the state dict (with
  the files of ``Trainable.save_files``, DeepSpeed's own checkpoint) restores model and optimiser exactly.
- logger: scalars, an image and text are accepted; lifecycle methods accept the hook's arguments.
- method: a few training steps on a tiny run give finite scalars, the same under the same seed; the
  state dict survives ``torch.load(weights_only=True)`` and a run rebuilt from it continues exactly.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import io
import json
import math
import shutil
import tempfile
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from diffratio.components import (
    KINDS,
    Backbone,
    Dataset,
    Divergence,
    EvalContext,
    Generator,
    Logger,
    Method,
    Metric,
    NoiseSchedule,
    OptimizerConfig,
    RatioEstimator,
    Strategy,
    Trainable,
    full_parameters,
)
from diffratio.edm import EDMDenoiser, c_noise

__all__ = [
    "ConformanceError", "check_component", "check_config", "check_divergence", "check_schedule",
    "check_backbone", "check_generator", "check_ratio", "check_dataset", "check_metric", "check_strategy",
    "check_logger", "check_method", "make_recipe", "perturb_zero_parameters", "TinyBackbone", "GaussianPoints",
]

#: logits where a divergence's weight must equal r^2 F''(r) (inside every built-in clamp)
F_VALUES: tuple[float, ...] = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
#: noise levels used for forward passes: from the smallest to the largest EDM sigma
SIGMAS: tuple[float, ...] = (0.002, 0.05, 1.0, 80.0)


class ConformanceError(AssertionError):
    """A component breaks a rule of its kind; the message names the component and the rule."""


class _Reporter:
    """Prefixes every failure with the component's kind, registered name and class."""

    def __init__(self, kind: str, cls: type) -> None:
        name = cls.__dict__.get("registered_name") or ""
        where = f"{cls.__module__}.{cls.__qualname__}"
        self.label = f"{kind} {name!r} ({where})" if name else f"{kind} {where}"

    def fail(self, message: str) -> typing.NoReturn:
        raise ConformanceError(f"{self.label}: {message}")

    def require(self, condition: bool, message: str | Callable[[], str]) -> None:
        if not condition:
            self.fail(message() if callable(message) else message)

    def finite(self, t: Tensor, what: str) -> None:
        if not torch.is_tensor(t):
            self.fail(f"{what} is a {type(t).__name__}, expected a tensor")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = (~torch.isfinite(t)).sum().item()
            self.fail(f"{what} has {bad} non-finite value(s) of {t.numel()}")

    def shape(self, t: Tensor, expected: Sequence[int], what: str) -> None:
        self.require(tuple(t.shape) == tuple(expected),
                     lambda: f"{what} has shape {tuple(t.shape)}, expected {tuple(expected)}")


def _names_component(kind: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Turn any other exception a check meets into a ``ConformanceError`` naming the component."""

    def decorate(check: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(check)
        def wrapper(cls: type, config: Any = None, **options: Any) -> None:
            try:
                check(cls, config, **options)
            except ConformanceError:
                raise
            except Exception as exc:
                raise ConformanceError(f"{_Reporter(kind, cls).label}: {type(exc).__name__}: {exc}") from exc

        return wrapper

    return decorate


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run the block under ``torch.manual_seed(seed)`` without changing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def _drop_none(data: Any) -> Any:
    """TOML has no null: a None value can only come from leaving the key out."""
    if isinstance(data, dict):
        return {k: _drop_none(v) for k, v in data.items() if v is not None}
    return data


def check_config(cls: type, config: Any = None, *, kind: str = "component") -> Any:
    """Check ``cls.Config`` and return the config to build with (``config``, or the defaults)."""
    from diffratio.recipe import converter

    rep = _Reporter(kind, cls)
    Config = getattr(cls, "Config", None)
    rep.require(Config is not None and attrs.has(Config), "Config must be an attrs class "
                "(@attrs.frozen(kw_only=True) class Config: ...)")
    try:
        hints = typing.get_type_hints(Config)
    except Exception as exc:  # an annotation naming something the module does not define
        rep.fail(f"the annotations of Config cannot be resolved: {type(exc).__name__}: {exc}")
    fields = attrs.fields(Config)
    untyped = [f.name for f in fields if f.name not in hints]
    rep.require(not untyped, f"Config fields without a type annotation: {untyped}")
    not_kw = [f.name for f in fields if not f.kw_only]
    rep.require(not not_kw, f"Config fields must be keyword-only (@attrs.frozen(kw_only=True)); not: {not_kw}")
    required = [f.name for f in fields if f.default is attrs.NOTHING]
    if config is None:
        rep.require(not required, f"Config has required fields {required}: pass config=Config(...) to the check")
        config = Config()
    rep.require(isinstance(config, Config), f"config is a {type(config).__name__}, expected {cls.__name__}.Config")
    probe = fields[0].name if fields else "_conformance_probe"
    try:
        setattr(config, probe, getattr(config, probe, None))
    except attrs.exceptions.FrozenInstanceError:
        pass
    else:
        rep.fail("Config must be frozen (@attrs.frozen): a recipe's settings may not change during a run")
    try:
        data = _drop_none(json.loads(json.dumps(converter.unstructure(config))))
    except (TypeError, ValueError) as exc:
        rep.fail(f"Config does not unstructure to plain TOML/JSON values: {exc}")
    try:
        back = converter.structure(data, Config)
    except Exception as exc:
        rep.fail(f"Config does not structure back from {data!r}: {type(exc).__name__}: {exc}")
    rep.require(back == config, lambda: f"Config round trip changed it: {config!r} -> {data!r} -> {back!r}")
    return config


def _check_stored_config(rep: _Reporter, obj: Any, config: Any) -> None:
    rep.require(getattr(obj, "config", None) == config,
                "the component must keep its config as self.config (the engine and checkpoints read it)")


# --------------------------------------------------------------------------------------------------
# Helpers for networks
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def perturb_zero_parameters(module: nn.Module, scale: float = 0.1, seed: int = 0) -> list[str]:
    """Give every all-zero parameter small random values; return their names.

    Zero-initialised output layers (and adaLN-Zero gates) make the gradient of every layer before them
    exactly zero at initialisation; perturbing them lets a gradient-flow check see the whole network.
    """
    g = torch.Generator().manual_seed(seed)
    names = []
    for name, p in module.named_parameters():
        if p.numel() and not bool(p.ne(0).any()):
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
            names.append(name)
    return names


def _check_parameter_gradients(rep: _Reporter, module: nn.Module, what: str) -> None:
    none, bad, zero = [], [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            none.append(name)
        elif not bool(torch.isfinite(p.grad).all()):
            bad.append(name)
        elif not bool(p.grad.ne(0).any()):
            zero.append(name)
    rep.require(not none, f"{what}: parameters that receive no gradient (unused in forward?): {none[:10]}")
    rep.require(not bad, f"{what}: parameters with non-finite gradients: {bad[:10]}")
    rep.require(not zero, f"{what}: parameters whose gradient is exactly zero (after perturbing zero-initialised "
                          f"layers): {zero[:10]}")


def _state_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Names whose tensors differ (or exist in only one of the two state dicts)."""
    diff = sorted(set(a) ^ set(b))
    for k in set(a) & set(b):
        va, vb = a[k], b[k]
        if torch.is_tensor(va):
            if not (torch.is_tensor(vb) and va.shape == vb.shape and torch.equal(va, vb)):
                diff.append(k)
        elif va != vb:
            diff.append(k)
    return sorted(diff)


def _check_module_state(rep: _Reporter, build: Callable[[], nn.Module], run: Callable[[nn.Module], Tensor],
                        what: str) -> None:
    """Same seed -> same tensors and output; a differently seeded copy loads the state and matches."""
    with _seeded(0):
        a = build()
    with _seeded(0):
        b = build()
    differ = _state_diff(a.state_dict(), b.state_dict())
    rep.require(not differ, f"{what}: two builds under the same seed differ in {differ[:10]}")
    a.eval()
    b.eval()
    with torch.no_grad():
        out_a, out_b = run(a), run(b)
    rep.require(torch.equal(out_a, out_b), f"{what}: two builds under the same seed give different outputs")
    with _seeded(1):
        c = build()
    try:
        c.load_state_dict(copy.deepcopy(a.state_dict()))
    except Exception as exc:
        rep.fail(f"{what}: load_state_dict(state_dict()) of a fresh build fails: {type(exc).__name__}: {exc}")
    c.eval()
    with torch.no_grad():
        out_c = run(c)
    rep.require(torch.allclose(out_a, out_c, rtol=1e-5, atol=1e-6),
                lambda: f"{what}: after load_state_dict a fresh build gives another output (max difference "
                        f"{(out_a - out_c).abs().max().item():.3g}): some state is not in state_dict")


def _inputs(data_shape: Sequence[int], num_labels: int, batch_size: int, seed: int = 0
            ) -> tuple[Tensor, Tensor, Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *data_shape, generator=g)
    sigma = torch.tensor([SIGMAS[i % len(SIGMAS)] for i in range(batch_size)])
    labels = torch.randint(num_labels, (batch_size,), generator=g) if num_labels else None
    return x, sigma, labels


# --------------------------------------------------------------------------------------------------
# Mathematics: divergences and noise schedules
# --------------------------------------------------------------------------------------------------


@_names_component("divergence")
def check_divergence(cls: type, config: Any = None, *, f_values: Sequence[float] = F_VALUES,
                     f_range: tuple[float, float] = (-20.0, 20.0), rtol: float = 1e-4) -> None:
    """``weight(f) = r^2 F''(r)`` (autograd, float64) at ``f_values``, ``F(1) = 0``, weights elementwise,
    finite and non-negative on ``f_range``. ``f_values`` must avoid where the weight is clamped."""
    rep = _Reporter("divergence", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, Divergence), "must derive from diffratio.Divergence")
    config = check_config(cls, config, kind="divergence")
    div = cls(config)
    _check_stored_config(rep, div, config)

    f = torch.linspace(f_range[0], f_range[1], 161)
    h = div.weight(f)
    rep.shape(h, f.shape, "weight(f) of a (161,) tensor")
    rep.require(h.is_floating_point(), f"weight(f) must be a float tensor, got {h.dtype}")
    rep.finite(h, f"weight(f) for f in [{f_range[0]}, {f_range[1]}]")
    rep.require(bool((h >= 0).all()), lambda: f"weight(f) is negative at f = {f[h < 0][:5].tolist()}: h = r^2 F''(r) "
                                             "of a convex F is never negative")
    h2 = div.weight(f.reshape(7, 23))
    rep.require(tuple(h2.shape) == (7, 23) and torch.allclose(h2.reshape(-1), h),
                "weight must act elementwise (a (7, 23) input gives the same values in the same shape)")
    rep.require(torch.equal(div.weight(f), h), "weight(f) is not deterministic")

    one = torch.ones(1, dtype=torch.float64)
    F1 = float(div.F(one))
    rep.require(abs(F1) < 1e-9, f"F(1) = {F1}, must be 0 (an f-divergence of a distribution from itself is 0)")

    fs = torch.tensor(list(f_values), dtype=torch.float64)
    r = torch.exp(-fs).requires_grad_(True)
    Fr = div.F(r)
    rep.shape(Fr, r.shape, "F(r)")
    (dF,) = torch.autograd.grad(Fr.sum(), r, create_graph=True)
    (d2F,) = torch.autograd.grad(dF.sum(), r)
    expected = (r.detach() ** 2 * d2F).double()
    got = div.weight(fs).double()
    close = (got - expected).abs() <= 1e-8 + rtol * expected.abs()
    rep.require(bool(close.all()), lambda: "weight(f) differs from r^2 F''(r), r = exp(-f):" + "".join(
        f"\n  f = {fv:+.2f}: weight {g:.6g}, r^2 F''(r) {e:.6g}"
        for fv, g, e, ok in zip(fs.tolist(), got.tolist(), expected.tolist(), close.tolist(), strict=True) if not ok))


@_names_component("schedule")
def check_schedule(cls: type, config: Any = None, *, n: int = 512) -> None:
    """sigma > 0, finite, shape (n,), reproducible under a seed; loss weights finite and >= 0."""
    rep = _Reporter("schedule", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, NoiseSchedule), "must derive from diffratio.NoiseSchedule")
    config = check_config(cls, config, kind="schedule")
    sched = cls(config)
    _check_stored_config(rep, sched, config)
    with _seeded(0):
        sigma = sched.sample(n, "cpu")
    rep.shape(sigma, (n,), f"sample({n})")
    rep.finite(sigma, "sample()")
    rep.require(bool((sigma > 0).all()), lambda: f"sample() gave sigma <= 0: {sigma[sigma <= 0][:5].tolist()}")
    with _seeded(0):
        again = sched.sample(n, "cpu")
    rep.require(torch.equal(sigma, again), "sample() differs under the same torch.manual_seed")
    grid = torch.logspace(math.log10(0.002), math.log10(80.0), 33)
    for s, where in ((sigma, "sampled sigma"), (grid, "sigma in [0.002, 80]")):
        for name in ("generator_weight", "ratio_weight"):
            w = getattr(sched, name)(s)
            rep.shape(w, s.shape, f"{name}({where})")
            rep.finite(w, f"{name}({where})")
            rep.require(bool((w >= 0).all()), f"{name}({where}) has negative values")
    x = torch.randn(8, 3)
    noised = sched.noise(x, sigma[:8])
    rep.shape(noised, x.shape, "noise(x, sigma)")
    rep.finite(noised, "noise(x, sigma)")


# --------------------------------------------------------------------------------------------------
# Networks: backbones, generators, ratio estimators
# --------------------------------------------------------------------------------------------------


class TinyBackbone(Backbone):
    """Two tanh layers over the flattened sample: the default body of the generator and ratio checks.

    ``full`` mode ends in a zero-initialised linear layer; ``encoder`` mode returns the hidden layer.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        hidden: int = attrs.field(default=16, validator=attrs.validators.gt(0))  # width of both layers

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


@_names_component("backbone")
def check_backbone(cls: type, config: Any = None, *, data_shape: Sequence[int] = (2,), num_labels: int = 0,
                   batch_size: int = 3, encoder: bool = True) -> None:
    """Shapes, determinism, state_dict round trip and gradient flow in ``full`` and (unless
    ``encoder=False``) ``encoder`` mode; encoder tensors are a subset of full mode's by name and shape."""
    rep = _Reporter("backbone", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, Backbone), "must derive from diffratio.Backbone")
    config = check_config(cls, config, kind="backbone")
    data_shape = tuple(data_shape)
    x, sigma, labels = _inputs(data_shape, num_labels, batch_size)
    noise_labels = c_noise(sigma)
    states: dict[str, dict[str, Tensor]] = {}
    for mode in ("full", "encoder") if encoder else ("full",):
        def build(mode: str = mode) -> Backbone:
            return cls(config, data_shape=data_shape, num_labels=num_labels, mode=mode)

        what = f"{mode} mode, data_shape {data_shape}, num_labels {num_labels}"
        with _seeded(0):
            try:
                net = build()
            except Exception as exc:
                rep.fail(f"building in {what} fails: {type(exc).__name__}: {exc}")
        _check_stored_config(rep, net, config)
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
        _check_module_state(rep, build, lambda m: m(x, noise_labels, labels), what)

        perturb_zero_parameters(net)
        xg = x.clone().requires_grad_(True)
        out = net(xg, noise_labels, labels)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        _check_parameter_gradients(rep, net, f"gradient in {what}")
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


def _backbone_factory(backbone: type | None, backbone_config: Any, data_shape: tuple[int, ...],
                      num_labels: int) -> Callable[[str], Backbone]:
    bcls = backbone or TinyBackbone
    bcfg = backbone_config if backbone_config is not None else bcls.Config()

    def build(mode: str) -> Backbone:
        return bcls(bcfg, data_shape=data_shape, num_labels=num_labels, mode=mode)

    return build


@_names_component("generator")
def check_generator(cls: type, config: Any = None, *, backbone: type | None = None, backbone_config: Any = None,
                    data_shape: Sequence[int] = (2,), num_labels: int = 0, sigma_data: float = 0.5,
                    batch_size: int = 3) -> None:
    """Built like the engine does, ``cls(config, denoiser=EDMDenoiser(backbone))`` (``TinyBackbone`` unless
    given): keeps that denoiser, maps latents to samples of the data shape, determinism, state_dict
    round trip, gradient flow to every parameter."""
    rep = _Reporter("generator", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, Generator), "must derive from diffratio.Generator")
    config = check_config(cls, config, kind="generator")
    data_shape = tuple(data_shape)
    make_backbone = _backbone_factory(backbone, backbone_config, data_shape, num_labels)

    def build() -> Generator:
        return cls(config, denoiser=EDMDenoiser(make_backbone("full"), sigma_data=sigma_data))

    with _seeded(0):
        denoiser = EDMDenoiser(make_backbone("full"), sigma_data=sigma_data)
        gen = cls(config, denoiser=denoiser)
    _check_stored_config(rep, gen, config)
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
    _check_module_state(rep, build, lambda m: m(z, labels), "generator")
    perturb_zero_parameters(gen)
    gen(z, labels).pow(2).sum().backward()
    _check_parameter_gradients(rep, gen, "generator gradient")


@_names_component("ratio")
def check_ratio(cls: type, config: Any = None, *, backbone: type | None = None, backbone_config: Any = None,
                data_shape: Sequence[int] = (2,), num_labels: int = 0, sigma_data: float = 0.5,
                batch_size: int = 4) -> None:
    """Built like the engine does, ``cls(config, backbone=<encoder>, sigma_data=...)``: logits of shape (B,)
    for sigma in [0.002, 80], determinism, state_dict round trip, gradients to every parameter and to the
    input (also with the parameters frozen), and ``init_from_denoiser`` if implemented."""
    rep = _Reporter("ratio", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, RatioEstimator),
                "must derive from diffratio.RatioEstimator")
    config = check_config(cls, config, kind="ratio")
    data_shape = tuple(data_shape)
    make_backbone = _backbone_factory(backbone, backbone_config, data_shape, num_labels)

    def build() -> RatioEstimator:
        return cls(config, backbone=make_backbone("encoder"), sigma_data=sigma_data)

    with _seeded(0):
        ratio = build()
    _check_stored_config(rep, ratio, config)
    x, sigma, labels = _inputs(data_shape, num_labels, batch_size)
    ratio.eval()
    with torch.no_grad():
        f = ratio(x, sigma, labels)
    rep.shape(f, (batch_size,), "logits (batch,)")
    rep.finite(f, f"logits at sigma {SIGMAS}")
    _check_module_state(rep, build, lambda m: m(x, sigma, labels), "ratio estimator")

    perturb_zero_parameters(ratio)
    xg = x.clone().requires_grad_(True)
    ratio(xg, sigma, labels).sum().backward()
    _check_parameter_gradients(rep, ratio, "ratio gradient")
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

    with _seeded(2):
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


# --------------------------------------------------------------------------------------------------
# Data, metrics, strategies, loggers
# --------------------------------------------------------------------------------------------------


class GaussianPoints(Dataset):
    """Standard normal points in ``dim`` dimensions: the default data of the metric and method checks."""

    @attrs.frozen(kw_only=True)
    class Config:
        dim: int = attrs.field(default=2, validator=attrs.validators.ge(1))  # dimension of the points
        num_points: int = attrs.field(default=4096, validator=attrs.validators.ge(1))  # training sample size
        seed: int = 0  # seed of the training sample

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.points = torch.randn(c.num_points, c.dim, generator=torch.Generator().manual_seed(c.seed))

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (self.config.dim,)

    @property
    def sigma_data(self) -> float:
        return 1.0

    def __len__(self) -> int:
        return self.points.shape[0]

    def get(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.points[index], None

    def to(self, device: torch.device) -> GaussianPoints:
        self.points = self.points.to(device)
        return self

    def reference(self, n: int) -> Tensor:
        return torch.randn(n, self.config.dim, generator=torch.Generator().manual_seed(self.config.seed + 1))


@_names_component("dataset")
def check_dataset(cls: type, config: Any = None, *, num_indices: int = 8) -> None:
    """Shapes and dtypes of ``get`` and ``reference``, labels in range, finite data, the same data for the
    same config (random augmentation under the same seed included)."""
    rep = _Reporter("dataset", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, Dataset), "must derive from diffratio.Dataset")
    config = check_config(cls, config, kind="dataset")
    ds = cls(config)
    _check_stored_config(rep, ds, config)
    moved = ds.to(torch.device("cpu"))
    rep.require(isinstance(moved, Dataset), f"to(device) must return the data set, got {type(moved).__name__}")
    ds = moved
    shape = ds.data_shape
    rep.require(isinstance(shape, tuple) and shape and all(isinstance(d, int) and d > 0 for d in shape),
                f"data_shape must be a tuple of positive ints, got {shape!r}")
    n = len(ds)
    rep.require(isinstance(n, int) and n > 0, f"len() must be a positive int, got {n!r}")
    k = ds.num_labels
    rep.require(isinstance(k, int) and k >= 0, f"num_labels must be an int >= 0, got {k!r}")
    sd = ds.sigma_data
    rep.require(isinstance(sd, float) and math.isfinite(sd) and sd > 0, f"sigma_data must be a float > 0, got {sd!r}")

    idx = torch.linspace(0, n - 1, min(num_indices, n)).round().long()
    with _seeded(0):
        x, y = ds.get(idx)
    rep.shape(x, (len(idx), *shape), f"get() of {len(idx)} indices")
    rep.require(x.is_floating_point(), f"get() must return float samples (model units), got {x.dtype}")
    rep.finite(x, "get()")
    if k == 0:
        rep.require(y is None, "get() returns labels but num_labels is 0")
    else:
        rep.require(y is not None, f"num_labels is {k} but get() returns no labels")
        assert y is not None
        rep.shape(y, (len(idx),), "labels")
        rep.require(not y.is_floating_point() and y.dtype != torch.bool, f"labels must be integers, got {y.dtype}")
        rep.require(bool(((y >= 0) & (y < k)).all()), f"labels outside [0, {k}): {y.tolist()}")
    ref = ds.reference(16)
    rep.require(ref.device.type == "cpu" and ref.is_floating_point(), "reference() must return float tensors on CPU")
    rep.require(tuple(ref.shape[1:]) == shape and 0 < ref.shape[0] <= 16,
                f"reference(16) has shape {tuple(ref.shape)}, expected (<= 16, *{shape})")
    rep.finite(ref, "reference()")
    image = ds.to_image(x)
    if image is not None:
        rep.require(image.dtype == torch.uint8 and image.ndim == 4 and image.shape[0] == len(idx),
                    f"to_image must give uint8 (B, C, H, W), got {image.dtype} {tuple(image.shape)}")

    again = cls(config)
    with _seeded(0):
        x2, y2 = again.get(idx)
    rep.require(torch.equal(x, x2) and (y is None or torch.equal(y, y2)),
                "two data sets built from the same config give different samples (seed the data)")
    rep.require(torch.equal(ref, again.reference(16)), "reference() differs between two builds of the same config")


@_names_component("metric")
def check_metric(cls: type, config: Any = None, *, dataset: Dataset | None = None,
                 sample: Callable[[int], Tensor] | None = None, run_dir: str | Path | None = None) -> None:
    """Finite values under string names, the same under the same seed and for a fresh instance.

    ``dataset`` defaults to ``GaussianPoints`` and ``sample`` to its reference points plus noise; image
    metrics need an image data set and a sampler of images in model units.
    """
    rep = _Reporter("metric", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, Metric), "must derive from diffratio.Metric")
    config = check_config(cls, config, kind="metric")
    ds = dataset if dataset is not None else GaussianPoints()

    def default_sample(n: int) -> Tensor:
        return ds.reference(n) + 0.3 * torch.randn(n, *ds.data_shape)

    with tempfile.TemporaryDirectory() as tmp:
        ctx = EvalContext(sample=sample or default_sample, dataset=ds, device=torch.device("cpu"),
                          run_dir=str(run_dir or tmp), step=0)
        results = []
        for metric in (cls(config), cls(config)):
            _check_stored_config(rep, metric, config)
            with _seeded(0):
                results.append(metric.compute(ctx))
    first = results[0]
    rep.require(isinstance(first, dict) and first, f"compute() must return a non-empty dict, got {first!r}")
    for key, value in first.items():
        rep.require(isinstance(key, str) and key, f"result names must be non-empty strings, got {key!r}")
        rep.require(isinstance(value, (int, float)) and math.isfinite(float(value)),
                    f"result {key!r} must be a finite number, got {value!r}")
    rep.require(results[0] == results[1], f"compute() differs under the same seed: {results[0]} vs {results[1]}")


@_names_component("strategy")
def check_strategy(cls: type, config: Any = None) -> None:
    """A prepared model trains; a step with a non-finite loss changes nothing and sets ``last_step_ok``
    false; the Trainable's state dict restores model and optimiser exactly."""
    rep = _Reporter("strategy", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, Strategy), "must derive from diffratio.Strategy")
    config = check_config(cls, config, kind="strategy")
    strat = cls(config)
    _check_stored_config(rep, strat, config)
    dev = strat.device
    rep.require(isinstance(dev, torch.device), f"device must be a torch.device, got {dev!r}")
    rep.require(0 <= strat.rank < strat.world_size, f"rank {strat.rank} outside world size {strat.world_size}")
    rep.require(strat.is_main == (strat.rank == 0), "is_main must be rank == 0")
    optim = OptimizerConfig(lr=0.05, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=g).to(dev)

    def prepare(name: str, optim: OptimizerConfig = optim) -> Trainable:
        with _seeded(0):
            return strat.prepare(name, nn.Linear(3, 2), optim)

    def weights(t: Trainable) -> dict[str, Tensor]:
        with full_parameters(t.raw):  # gathered where the strategy partitions them (ZeRO-3)
            return {k: v.detach().clone() for k, v in t.raw.state_dict().items()}

    def train(t: Trainable) -> dict[str, Any]:
        with strat.autocast():
            loss = t.module(x).float().pow(2).mean()
        t.backward(loss)
        return t.step()

    a = prepare("conformance-a")
    rep.require(isinstance(a, Trainable), f"prepare must return a diffratio.Trainable, got {type(a).__name__}")
    before = weights(a)
    out = train(a)
    rep.require(isinstance(out, dict), f"Trainable.step must return a dict of diagnostics, got {type(out).__name__}")
    rep.require(bool(_state_diff(before, weights(a))), "a training step did not change the parameters")
    leftover = [n for n, p in a.raw.named_parameters() if p.grad is not None and bool(p.grad.ne(0).any())]
    rep.require(not leftover, f"Trainable.step must zero the gradients; still set: {leftover}")
    rep.require(bool(a.last_step_ok), "last_step_ok must be true after a step with finite loss and gradients")
    state = copy.deepcopy(a.state_dict())
    folder = Path(strat.broadcast_object(tempfile.mkdtemp(prefix="diffratio-strategy-") if strat.is_main else None))
    a.save_files(folder / "a")  # state kept outside the state dict (DeepSpeed's own checkpoint)
    b = prepare("conformance-b")
    b.load_state_dict(state)
    b.load_files(folder / "a")
    rep.require(not _state_diff(weights(a), weights(b)), "load_state_dict did not restore the model")
    # a step whose loss is not finite is skipped: no update, last_step_ok false, optimiser state untouched
    before = weights(a)
    with strat.autocast():
        loss = a.module(x).float().pow(2).mean() * float("nan")
    a.backward(loss)
    a.step()
    rep.require(not _state_diff(before, weights(a)), "a step with a non-finite loss changed the parameters "
                "(Trainable.step must skip it)")
    rep.require(not bool(a.last_step_ok), "last_step_ok must be false after a step with a non-finite loss")
    train(a)
    train(b)
    rep.require(not _state_diff(weights(a), weights(b)),
                "after load_state_dict (and a skipped step) the next step differs: the optimiser state is not "
                "restored, or the skipped step changed it")
    # the learning-rate decay reaches the optimiser: lr_final = 0 at the last step leaves the weights alone
    c = prepare("conformance-lr", OptimizerConfig(lr=0.05, betas=(0.9, 0.99), lr_decay="linear"))
    rep.require(c.schedule_lr(9, 10) == 0.0, "schedule_lr(last step) must return lr * lr_final = 0")
    before = weights(c)
    train(c)
    rep.require(not _state_diff(before, weights(c)), "a step at learning rate 0 changed the parameters: "
                "Trainable.set_lr does not reach the optimiser")
    rep.require(c.schedule_lr(0, 10) == optim.lr, "schedule_lr(0) must return the configured lr")
    train(c)
    rep.require(bool(_state_diff(before, weights(c))), "a step after schedule_lr(0) did not train")
    reduced = strat.all_reduce_mean({"value": 1.5})
    rep.require(set(reduced) == {"value"} and math.isfinite(reduced["value"]), "all_reduce_mean changed the keys")
    if strat.world_size == 1:
        rep.require(reduced["value"] == 1.5, "all_reduce_mean on one process must be the identity")
    strat.barrier()
    if strat.is_main:
        shutil.rmtree(folder, ignore_errors=True)


def _hook_arguments() -> dict[str, list[str]]:
    from diffratio.hooks import Hookspecs

    return {name: [p for p in inspect.signature(fn).parameters if p != "self"]
            for name, fn in vars(Hookspecs).items() if name.startswith("diffratio_on_")}


@_names_component("logger")
def check_logger(cls: type, config: Any = None, *, run_dir: str | Path | None = None) -> None:
    """Scalars, an image and text are accepted and the logger closes; every lifecycle method it defines
    (``diffratio_on_step_end`` ...) accepts the keyword arguments the engine passes to that hook."""
    rep = _Reporter("logger", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, Logger), "must derive from diffratio.Logger")
    config = check_config(cls, config, kind="logger")
    hooks = _hook_arguments()
    for name in dir(cls):
        if name.startswith("diffratio_on_"):
            rep.require(name in hooks, f"{name} is not a lifecycle hook (hooks: {', '.join(sorted(hooks))})")
            try:
                inspect.signature(getattr(cls, name)).bind(None, **dict.fromkeys(hooks[name]))
            except TypeError as exc:
                rep.fail(f"{name} must accept the keyword arguments {hooks[name]}: {exc}")
    with tempfile.TemporaryDirectory() as tmp:
        lg = cls(config, run_dir=str(run_dir or tmp))
        _check_stored_config(rep, lg, config)
        lg.log_scalars(1, {"loss/conformance": 0.5, "images_per_second": 100.0})
        lg.log_image(1, "samples", torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8))
        lg.log_text(1, "config", "conformance check")
        lg.close()


# --------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------


def make_recipe(method: type, config: Any = None, *, components: Mapping[str, tuple[type, Any]] | None = None,
                steps: int = 2, batch_size: int = 8, seed: int = 0, registry: Any = None) -> Any:
    """A resolved ``Recipe`` of a tiny CPU run of ``method``: ``GaussianPoints`` data, a ``TinyBackbone``,
    and for the other tables the recipe defaults (edm generator, classifier ratio, dijs, lognormal,
    single device on CPU) from the registry; ``components`` replaces tables: ``{"dataset": (cls, config)}``.
    """
    from diffratio.recipe import SINGLE_TABLES, Recipe, Resolved, RunSettings, converter
    from diffratio.registry import default_registry

    reg = registry or default_registry()
    tables: dict[str, tuple[type, Any]] = {
        "dataset": (GaussianPoints, GaussianPoints.Config()),
        "backbone": (TinyBackbone, TinyBackbone.Config()),
    }
    for table in ("generator", "ratio", "divergence", "schedule", "strategy"):
        cls = reg.get(table, SINGLE_TABLES[table]).cls
        data = {"device": "cpu"} if table == "strategy" else {}
        tables[table] = (cls, converter.structure(data, cls.Config))
    tables.update(components or {})
    needed = ("dataset", "strategy", *getattr(method, "uses", ()))
    resolved = {"method": Resolved(kind="method", name=method.__dict__.get("registered_name") or method.__name__,
                                   cls=method, config=config if config is not None else method.Config())}
    for table in needed:
        cls, cfg = tables[table]
        resolved[table] = Resolved(kind=table, name=cls.__dict__.get("registered_name") or cls.__name__, cls=cls,
                                   config=cfg)
    settings = RunSettings(name="conformance", steps=steps, batch_size=batch_size, seed=seed, log_every=1,
                           checkpoint_every=steps, eval_every=0, sample_every=0, min_free_disk_gb=0.0)
    return Recipe(settings=settings, components=resolved, metrics={}, loggers={}, text="", sets=(),
                  source="<diffratio.testing>")


def _scalars(rep: _Reporter, values: Any, where: str) -> dict[str, float]:
    rep.require(isinstance(values, dict), f"{where} must return a dict of scalars, got {type(values).__name__}")
    out = {}
    for k, v in values.items():
        rep.require(isinstance(k, str) and k, f"{where}: scalar names must be non-empty strings, got {k!r}")
        if torch.is_tensor(v):
            rep.require(v.numel() == 1, f"{where}: {k!r} must be a 0-d tensor or a float, got shape {tuple(v.shape)}")
            v = float(v)
        rep.require(isinstance(v, (int, float)) and math.isfinite(v), f"{where}: {k!r} = {v!r} is not finite")
        out[k] = float(v)
    return out


@_names_component("method")
def check_method(cls: type, config: Any = None, *, components: Mapping[str, tuple[type, Any]] | None = None,
                 steps: int = 2, batch_size: int = 8, run_dir: str | Path | None = None, registry: Any = None) -> None:
    """A tiny run (``make_recipe``): finite step scalars, the same under the same seed; samples of the data
    shape; the state dict survives ``torch.load(weights_only=True)`` (as checkpoints are read) and a
    differently seeded run that loads it (and the data sampler's state) continues exactly."""
    from diffratio.engine import build_run
    from diffratio.registry import default_registry

    rep = _Reporter("method", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, Method), "must derive from diffratio.Method")
    config = check_config(cls, config, kind="method")
    unknown = [t for t in getattr(cls, "uses", ()) if t not in KINDS]
    rep.require(not unknown, f"uses names unknown tables {unknown}")
    reg = registry or default_registry()
    with tempfile.TemporaryDirectory() as tmp, _seeded(0):
        where = Path(run_dir or tmp)

        def build(seed: int) -> Any:
            return build_run(make_recipe(cls, config, components=components, steps=steps, batch_size=batch_size,
                                         seed=seed, registry=reg), where, reg)

        runs = [build(0), build(0)]
        _check_stored_config(rep, runs[0].method, config)
        history: list[list[dict[str, float]]] = [[], []]
        for run, hist in zip(runs, history, strict=True):
            torch.manual_seed(10)
            for step in range(steps):
                hist.append(_scalars(rep, run.method.train_step(step), f"train_step({step})"))
        rep.require(history[0] == history[1], lambda: f"two runs under the same seed differ: {history[0]} vs "
                                                      f"{history[1]}")
        method = runs[0].method
        data_shape = runs[0].ctx.data_shape
        torch.manual_seed(11)
        samples = method.sample(5)
        rep.shape(samples, (5, *data_shape), "sample(5)")
        rep.finite(samples, "sample(5)")
        counts = method.parameter_counts()
        rep.require(isinstance(counts, dict) and all(isinstance(v, int) for v in counts.values()),
                    f"parameter_counts must map names to ints, got {counts!r}")
        per_step = method.images_per_step()
        rep.require(isinstance(per_step, int) and per_step > 0, f"images_per_step must be an int > 0, got {per_step!r}")

        buffer = io.BytesIO()
        torch.save(method.state_dict(), buffer)
        buffer.seek(0)
        try:
            state = torch.load(buffer, weights_only=True)
        except Exception as exc:
            rep.fail(f"state_dict() cannot be read back with torch.load(weights_only=True), as checkpoints are: "
                     f"{type(exc).__name__}: {exc}")
        resumed = build(1)
        resumed.method.load_state_dict(state)
        resumed.ctx.sampler.load_state_dict(runs[0].ctx.sampler.state_dict())
        after = []
        for run in (runs[0], resumed):
            torch.manual_seed(12)
            values = _scalars(rep, run.method.train_step(steps), f"train_step({steps})")
            torch.manual_seed(13)
            after.append((values, run.method.sample(5)))
        rep.require(after[0][0] == after[1][0], lambda: f"a run rebuilt from state_dict() continues differently: "
                                                        f"{after[0][0]} vs {after[1][0]}")
        rep.require(torch.equal(after[0][1], after[1][1]), "a run rebuilt from state_dict() samples differently")


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------

CHECKS: dict[str, Callable[..., None]] = {
    "backbone": check_backbone,
    "generator": check_generator,
    "ratio": check_ratio,
    "divergence": check_divergence,
    "method": check_method,
    "schedule": check_schedule,
    "dataset": check_dataset,
    "metric": check_metric,
    "strategy": check_strategy,
    "logger": check_logger,
}
assert set(CHECKS) == set(KINDS), "every component kind needs a conformance check"


def check_component(kind: str, cls: type, config: Any = None, **options: Any) -> None:
    """Run the checks of ``kind`` (a key of ``diffratio.components.KINDS``) on ``cls``; ``options`` go to
    the kind's check (``data_shape=`` for a backbone, ``dataset=`` for a metric, ...)."""
    if kind not in CHECKS:
        raise ValueError(f"unknown component kind {kind!r} (kinds: {', '.join(CHECKS)})")
    CHECKS[kind](cls, config, **options)
