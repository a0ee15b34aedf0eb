"""The image backbones (U-Net, DiT) on CPU with tiny configs: shapes, conditioning, encoder weights, errors."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import torch
import torch.nn.functional as F

from diffratio import Backbone, DiffRatioError, count_parameters
from diffratio import attention as attn
from diffratio.edm import EDMDenoiser
from diffratio.recipe import structure_config
from diffratio_builtins.backbones import dit, unet
from diffratio_builtins.models import ClassifierRatio

UNET_TINY = unet.UNetBackbone.Config(model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
                                     num_heads=2)
DIT_TINY = dit.DiTBackbone.Config(size="S", depth=2, hidden=32, heads=2, patch_size=2)
SHAPE = {"unet": (2, 8, 8), "dit": (3, 8, 8)}


def build(kind: str, mode: str = "full", num_labels: int = 0, **overrides: Any) -> Backbone:
    if kind == "unet":
        cls, base = unet.UNetBackbone, UNET_TINY
    else:
        cls, base = dit.DiTBackbone, DIT_TINY
    config = cls.Config(**{**_fields(base), **overrides})
    return cls(config, data_shape=SHAPE[kind], num_labels=num_labels, mode=mode)


def _fields(config: Any) -> dict[str, Any]:
    return {a.name: getattr(config, a.name) for a in type(config).__attrs_attrs__}


def inputs(kind: str, batch: int = 3, num_labels: int = 0, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *SHAPE[kind], generator=g)
    s = torch.randn(batch, generator=g)
    y = torch.randint(0, num_labels, (batch,), generator=g) if num_labels else None
    return x, s, y


def perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """Move every parameter off its (zero or near-zero) initial value, so every path reaches the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


KINDS = ["unet", "dit"]


@pytest.mark.parametrize("num_labels", [0, 4])
@pytest.mark.parametrize("kind", KINDS)
def test_forward_backward_shapes(kind: str, num_labels: int) -> None:
    x, s, y = inputs(kind, num_labels=num_labels)
    for mode in ("full", "encoder"):
        model = build(kind, mode, num_labels)
        out = model(x, s, y)
        expected = x.shape if mode == "full" else (x.shape[0], model.feature_dim)
        assert out.shape == expected, (mode, out.shape)
        if mode == "full":
            assert out.abs().max() == 0  # zero-initialised output layer
        (out.square().sum() + out.sum()).backward()
        unused = [n for n, p in model.named_parameters() if p.grad is None]
        assert not unused, f"{mode}: parameters outside the graph: {unused}"
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("mode", ["full", "encoder"])
@pytest.mark.parametrize("kind", KINDS)
def test_conditioning_changes_the_output_per_sample(kind: str, mode: str) -> None:
    model = build(kind, mode, num_labels=4).eval()
    perturb(model)
    x, s, y = inputs(kind, batch=3, num_labels=4)
    with torch.no_grad():
        base = model(x, s, y)
        s2, y2 = s.clone(), y.clone()
        s2[1] += 1.0
        y2[2] = (y[2] + 1) % 4
        other = model(x, s2, y2)
        alone = torch.cat([model(x[i:i + 1], s[i:i + 1], y[i:i + 1]) for i in range(3)])
    # each sample sees only its own sigma and label: batch entries never mix
    torch.testing.assert_close(alone, base, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(other[0], base[0], atol=0, rtol=0)
    assert (other[1] - base[1]).abs().max() > 1e-3  # sigma changed
    assert (other[2] - base[2]).abs().max() > 1e-3  # label changed


@pytest.mark.parametrize("kind", KINDS)
def test_missing_labels_and_label_dropout(kind: str) -> None:
    model = build(kind, num_labels=4, label_dropout=1.0)
    perturb(model)
    x, s, y = inputs(kind, num_labels=4)
    with pytest.raises(ValueError, match="pass class_labels"):
        model(x, s)
    with torch.no_grad():
        model.train()  # every label dropped: the labels no longer matter
        torch.testing.assert_close(model(x, s, y), model(x, s, (y + 1) % 4))
        model.eval()  # dropout is a training-time thing
        assert (model(x, s, y) - model(x, s, (y + 1) % 4)).abs().max() > 1e-3


@pytest.mark.parametrize("num_labels", [0, 4])
@pytest.mark.parametrize("kind", KINDS)
def test_encoder_names_are_a_subset_of_full_with_equal_shapes(kind: str, num_labels: int) -> None:
    full = build(kind, "full", num_labels).state_dict()
    enc = build(kind, "encoder", num_labels).state_dict()
    assert enc and set(enc) < set(full)
    assert {k: v.shape for k, v in enc.items()} == {k: full[k].shape for k in enc}


@pytest.mark.parametrize("kind", KINDS)
def test_ratio_estimator_loads_every_encoder_tensor_of_a_denoiser(kind: str) -> None:
    torch.manual_seed(0)
    denoiser = EDMDenoiser(build(kind, "full", num_labels=4))
    perturb(denoiser, seed=5)  # trained-looking weights, different from any fresh initialisation
    torch.manual_seed(1)
    ratio = ClassifierRatio(ClassifierRatio.Config(), backbone=build(kind, "encoder", num_labels=4))
    state = denoiser.state_dict()
    loaded = ratio.init_from_denoiser(state)
    own = ratio.backbone.state_dict()
    assert sorted(loaded) == sorted(f"backbone.{k}" for k in own)
    for name, tensor in own.items():
        assert torch.equal(tensor, state[f"backbone.{name}"]), name
    # the loaded encoder computes what the same modules compute inside the full network
    full = denoiser.backbone
    last = full.mid[1] if kind == "unet" else full.blocks[len(full.blocks) // 2 - 1]
    seen: dict[str, torch.Tensor] = {}
    last.register_forward_hook(lambda _m, _i, out: seen.__setitem__("h", out))
    x, s, y = inputs(kind, num_labels=4)
    with torch.no_grad():
        full(x, s, y)
        h = seen["h"]
        pooled = h.mean(dim=(2, 3)) if kind == "unet" else F.layer_norm(h, h.shape[-1:], eps=1e-6).mean(dim=1)
        torch.testing.assert_close(ratio.backbone(x, s, y), pooled, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("kind", "lighter"), [("unet", {"num_blocks": 2, "encoder_blocks": 1}),
                                               ("dit", {"depth": 4, "encoder_depth": 1})])
def test_a_lighter_ratio_estimator_loads_its_part_of_the_full_denoiser(kind: str, lighter: dict[str, int]) -> None:
    """With ``encoder_blocks`` / ``encoder_depth`` the estimator is a subset of the encoder half; it still starts
    from the same pretrained denoiser (built with the same [backbone] table, which the option leaves as it is)."""
    torch.manual_seed(0)
    denoiser = EDMDenoiser(build(kind, "full", **lighter))
    perturb(denoiser, seed=5)
    ratio = ClassifierRatio(ClassifierRatio.Config(), backbone=build(kind, "encoder", **lighter))
    half = build(kind, "encoder", **{k: v for k, v in lighter.items() if not k.startswith("encoder_")})
    state = denoiser.state_dict()
    loaded = ratio.init_from_denoiser(state)
    assert set(loaded) < {f"backbone.{k}" for k in half.state_dict()}  # fewer tensors than the encoder half
    assert count_parameters(ratio.backbone) < count_parameters(half)
    for name, tensor in ratio.backbone.state_dict().items():
        assert torch.equal(tensor, state[f"backbone.{name}"]), name


def test_init_from_denoiser_names_mismatched_tensors() -> None:
    denoiser = EDMDenoiser(build("unet", "full", model_channels=16))
    ratio = ClassifierRatio(ClassifierRatio.Config(), backbone=build("unet", "encoder"))
    with pytest.raises(ValueError, match=r"backbone\.conv_in\.weight: checkpoint \(16, 2, 3, 3\) vs model"):
        ratio.init_from_denoiser(denoiser.state_dict())


def test_reference_unet_parameter_count() -> None:
    cfg = unet.UNetBackbone.Config(model_channels=64, channel_mult=(1, 2, 2), num_blocks=2, attn_resolutions=(8,))
    full = unet.UNetBackbone(cfg, data_shape=(1, 32, 32))
    enc = unet.UNetBackbone(cfg, data_shape=(1, 32, 32), mode="encoder")
    # the 6.95M-parameter reference U-Net of docs/environment.md, within 1%; its ratio encoder was 2.8M
    assert count_parameters(full) == 6_987_585
    assert count_parameters(enc) == 2_808_832
    # the lighter estimator of docs/scale.md: one residual block per level instead of two
    lighter = unet.UNetBackbone(attrs.evolve(cfg, encoder_blocks=1), data_shape=(1, 32, 32), mode="encoder")
    assert count_parameters(lighter) == 1_994_816
    assert enc.feature_dim == 128
    # the defaults are EDM's CIFAR-10 DDPM++ layout, which the EDM paper lists at 55.73M parameters
    with torch.device("meta"):
        assert count_parameters(unet.UNetBackbone(unet.UNetBackbone.Config(), data_shape=(3, 32, 32))) == 55_732_739


@pytest.mark.parametrize(("size", "depth", "hidden", "heads", "millions"),
                         [("S", 12, 384, 6, 33), ("B", 12, 768, 12, 130), ("L", 24, 1024, 16, 458),
                          ("XL", 28, 1152, 16, 675)])
def test_dit_presets(size: str, depth: int, hidden: int, heads: int, millions: int) -> None:
    cfg = dit.DiTBackbone.Config(size=size, patch_size=2)
    with torch.device("meta"):  # no memory or time spent on the weights
        full = dit.DiTBackbone(cfg, data_shape=(4, 32, 32), num_labels=1000)
        enc = dit.DiTBackbone(cfg, data_shape=(4, 32, 32), num_labels=1000, mode="encoder")
    assert (len(full.blocks), full.hidden, full.heads) == (depth, hidden, heads)
    assert len(enc.blocks) == depth // 2 and enc.feature_dim == hidden
    # the DiT paper's counts at 256x256 (32x32x4 latents, 1000 classes) within 1%
    assert abs(count_parameters(full) / 1e6 - millions) < 0.01 * millions


def test_dit_xl2_for_512px_latents_and_overrides() -> None:
    with torch.device("meta"):
        model = dit.DiTBackbone(dit.DiTBackbone.Config(size="XL", patch_size=2), data_shape=(4, 64, 64),
                                num_labels=1000)
        out = model(torch.empty(2, 4, 64, 64), torch.empty(2), torch.zeros(2, dtype=torch.long))
    assert model.grid == (32, 32) and out.shape == (2, 4, 64, 64)
    small = build("dit", depth=3, hidden=48, heads=3)
    assert (len(small.blocks), small.hidden, small.heads) == (3, 48, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_attention_backend_choice_reaches_the_attention_function(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def recorder(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
        seen.append(backend)
        return attn.attention(q, k, v, backend)

    monkeypatch.setattr(unet if kind == "unet" else dit, "attention", recorder)
    x, s, _ = inputs(kind)
    outs = {}
    for backend in ("math", "sdpa"):
        seen.clear()
        torch.manual_seed(0)  # the same weights for both backends
        model = build(kind, attention=backend)
        perturb(model)
        with torch.no_grad():
            outs[backend] = model(x, s)
        # U-Net: attention at 4x4 in the down path, the middle and the up path; DiT: every block
        assert seen == [backend] * 3 if kind == "unet" else seen == [backend] * 2
    torch.testing.assert_close(outs["math"], outs["sdpa"], atol=1e-4, rtol=1e-4)
    assert type(build(kind)).attention_backends == ("sdpa", "math", "xformers")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_xformers_without_cuda_fails_at_construction(kind: str) -> None:
    with pytest.raises(DiffRatioError, match="xformers.*CUDA only"):
        build(kind, attention="xformers")


@pytest.mark.parametrize(("kind", "overrides", "shape", "message"), [
    ("unet", {"attn_resolutions": (3,)}, (2, 8, 8), r"attn_resolutions \[3\] never occur.*\[8, 4\]"),
    ("unet", {}, (2, 8, 6), r"square images"),
    ("unet", {"channel_mult": (1, 1, 1, 1)}, (2, 12, 12), r"resolution 12 cannot be halved 3 times"),
    ("unet", {"num_heads": 3}, (2, 8, 8), r"num_heads 3 does not divide the 16 channels.*4x4"),
    ("unet", {"head_channels": 5}, (2, 8, 8), r"head_channels 5 does not divide"),
    ("dit", {"patch_size": 3}, (3, 8, 8), r"patch_size 3 does not divide the resolution 8x8"),
    ("dit", {"heads": 5}, (3, 8, 8), r"heads 5 does not divide the width hidden = 32"),
    ("dit", {}, (3, 8), r"shape \(C, H, W\)"),
])
def test_bad_configs_fail_with_clear_messages(kind: str, overrides: dict[str, Any], shape: tuple[int, ...],
                                              message: str) -> None:
    cls = unet.UNetBackbone if kind == "unet" else dit.DiTBackbone
    base = UNET_TINY if kind == "unet" else DIT_TINY
    with pytest.raises(DiffRatioError, match=message):
        cls(cls.Config(**{**_fields(base), **overrides}), data_shape=shape)


def test_dit_encoder_needs_two_blocks() -> None:
    with pytest.raises(DiffRatioError, match="depth >= 2"):
        build("dit", "encoder", depth=1)


def test_dit_encoder_depth_keeps_the_first_blocks_of_the_full_network() -> None:
    """``encoder_depth`` (a lighter ratio estimator): the first k blocks, named as in full mode, so the
    estimator starts from those blocks of the pretrained denoiser; the output is the features after block k."""
    torch.manual_seed(0)
    full = build("dit", depth=4)
    perturb(full)
    enc = build("dit", "encoder", depth=4, encoder_depth=1)
    assert len(enc.blocks) == 1 and len(build("dit", "encoder", depth=4).blocks) == 2
    assert len(full.blocks) == len(build("dit", depth=4, encoder_depth=1).blocks) == 4  # full mode unchanged
    state = full.state_dict()
    enc.load_state_dict({k: v for k, v in state.items() if k in enc.state_dict()})
    assert not any(k.startswith(("blocks.1.", "final.")) for k in enc.state_dict())
    x, s, _ = inputs("dit")
    with torch.no_grad():  # the same computation as full mode's patch embedding, conditioning and block 0
        cond = full.embed(s, None)
        h = full.blocks[0](full.patch_embed(x).flatten(2).transpose(1, 2) + full.pos_embed, cond)
        torch.testing.assert_close(enc(x, s), torch.nn.functional.layer_norm(h, (32,), eps=1e-6).mean(dim=1))
    with pytest.raises(DiffRatioError, match="encoder_depth 5 exceeds the depth 4"):
        build("dit", "encoder", depth=4, encoder_depth=5)
    assert build("dit", "encoder", depth=1, encoder_depth=1).blocks  # one block is enough when asked for


def test_unet_encoder_blocks_keeps_the_first_blocks_of_each_level() -> None:
    """``encoder_blocks`` (a lighter ratio estimator): the first k residual blocks of each level of the down
    path and the middle, named as in full mode, so the estimator loads them from the pretrained denoiser and
    computes what the full network's down path computes with those blocks alone."""
    torch.manual_seed(0)
    full = build("unet", num_blocks=2)
    perturb(full)
    enc = build("unet", "encoder", num_blocks=2, encoder_blocks=1)
    assert list(enc.enc) == ["8x8_block0", "4x4_down", "4x4_block0"]
    assert list(build("unet", "encoder", num_blocks=2).enc) == [
        "8x8_block0", "8x8_block1", "4x4_down", "4x4_block0", "4x4_block1"]
    assert list(build("unet", num_blocks=2, encoder_blocks=1).enc) == list(full.enc)  # full mode unchanged
    state = full.state_dict()
    enc.load_state_dict({k: v for k, v in state.items() if k in enc.state_dict()})
    x, s, _ = inputs("unet")
    with torch.no_grad():
        emb = full.embed(s, None)
        h = full.conv_in(x)
        for name in ("8x8_block0", "4x4_down", "4x4_block0"):
            h = full.enc[name](h, emb)
        for blk in full.mid:
            h = blk(h, emb)
        torch.testing.assert_close(enc(x, s), h.mean(dim=(2, 3)))
    with pytest.raises(DiffRatioError, match="encoder_blocks 3 exceeds num_blocks 2"):
        build("unet", "encoder", num_blocks=2, encoder_blocks=3)


def test_recipe_tables_structure_into_the_configs() -> None:
    cfg, errors = structure_config({"model_channels": 64, "channel_mult": [1, 2, 2], "attn_resolutions": [8],
                                    "attention": "math"}, unet.UNetBackbone.Config, "recipe.backbone")
    assert not errors and cfg.channel_mult == (1, 2, 2) and cfg.attn_resolutions == (8,)
    _, errors = structure_config({"attention": "flash"}, unet.UNetBackbone.Config, "recipe.backbone")
    assert any("recipe.backbone.attention" in e and "'sdpa'" in e for e in errors), errors
    _, errors = structure_config({"channel_mult": []}, unet.UNetBackbone.Config, "recipe.backbone")
    assert any("recipe.backbone.channel_mult: must be a non-empty list" in e for e in errors), errors
    cfg, errors = structure_config({"size": "B", "patch_size": 4, "depth": 6}, dit.DiTBackbone.Config,
                                   "recipe.backbone")
    assert not errors and (cfg.size, cfg.depth, cfg.hidden) == ("B", 6, None)
    _, errors = structure_config({"size": "XXL"}, dit.DiTBackbone.Config, "recipe.backbone")
    assert any("recipe.backbone.size" in e for e in errors), errors


@pytest.mark.parametrize("kind", KINDS)
def test_channels_last_bf16_autocast_and_compile(kind: str) -> None:
    model = build(kind, num_labels=4).eval()
    perturb(model)
    x, s, y = inputs(kind, num_labels=4)
    with torch.no_grad():
        ref = model(x, s, y)
        torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last), s, y), ref,
                                   atol=1e-5, rtol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, s, y).float()
        assert (low - ref).abs().max() < 0.1 * ref.abs().max()
        # one graph, no breaks: no data-dependent Python control flow (dynamo only, no code generation)
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x, s, y), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_compile_scope_blocks_compiles_each_repeated_block(kind: str) -> None:
    """``strategy.compile_scope = "blocks"``: DiT's transformer blocks are compiled one by one (the rest
    stays eager), a U-Net (no repeated-block list) as one region, a module without a backbone as a whole;
    outputs unchanged (dynamo only: the eager backend)."""
    from diffratio_builtins.strategies.common import compile_blocks

    def compiled(m: torch.nn.Module) -> bool:
        return m._compiled_call_impl is not None

    model = build(kind, num_labels=4).eval()
    perturb(model)
    x, s, y = inputs(kind, num_labels=4)
    wrapper = torch.nn.Sequential(model)  # the backbone inside a larger module, as in a denoiser
    with torch.no_grad():
        ref = model(x, s, y)
        compile_blocks(wrapper, backend="eager")
        torch.testing.assert_close(model(x, s, y), ref, atol=1e-5, rtol=1e-5)
    if kind == "dit":
        assert all(compiled(b) for b in model.blocks) and not compiled(model) and not compiled(wrapper)
    else:
        assert compiled(model) and not compiled(wrapper)
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2))
    compile_blocks(plain, backend="eager")
    assert compiled(plain) and not compiled(plain[0])


def test_strategies_compile_only_on_gpus_and_by_scope() -> None:
    """``compiled`` (what the strategies run): nothing on CPU or with compile off; ``model`` wraps the whole
    network in ``torch.compile`` (the module itself untouched); ``blocks`` compiles DiT's blocks in place and
    returns the module. Compilation is lazy, so no GPU is needed to check which is which."""
    from diffratio_builtins.strategies.common import compiled
    from diffratio_builtins.strategies.single import SingleDevice

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    model = build("dit")
    assert compiled(model, SingleDevice.Config(compile=True), cpu) is model
    assert compiled(model, SingleDevice.Config(compile=False), cuda) is model
    whole = compiled(model, SingleDevice.Config(compile=True, compile_scope="model"), cuda)
    assert whole is not model and whole._orig_mod is model and model.blocks[0]._compiled_call_impl is None
    assert compiled(model, SingleDevice.Config(compile=True, compile_scope="blocks"), cuda) is model
    assert all(b._compiled_call_impl is not None for b in model.blocks)


def test_mlp_input_fourier_features() -> None:
    """``input_features`` adds sin/cos of fixed random projections of the input: off (the default) leaves the
    model as it was (same parameters, nothing more saved, same initial weights for a seed); on, the
    frequencies are saved with the weights (a run initialised from another uses its features) and change
    the output."""
    from diffratio_builtins.backbones.mlp import MLPBackbone

    def make(**kw: Any) -> MLPBackbone:
        torch.manual_seed(0)
        return MLPBackbone(MLPBackbone.Config(hidden=16, depth=1, **kw), data_shape=(2,))

    off, on = make(), make(input_features=8, input_scale=2.0)
    assert "input_freqs" not in off.state_dict() and off.inp.in_features == 2
    assert torch.equal(off.inp.weight, make(input_features=0).inp.weight)
    assert on.state_dict()["input_freqs"].shape == (2, 4) and on.inp.in_features == 2 + 8
    x = torch.randn(5, 2)
    feats = on.input_with_features(x)
    assert torch.allclose(feats[:, 2:6], torch.sin(2 * torch.pi * x @ on.input_freqs))
    assert torch.equal(feats[:, :2], x)
    other = make(input_features=8, input_scale=0.5)
    other.load_state_dict(on.state_dict())  # the frequencies travel with the weights
    assert torch.equal(other.input_freqs, on.input_freqs)


def saved_bytes(fn: Any) -> int:
    """Bytes of the tensors autograd keeps for the backward pass while ``fn()`` runs its forward."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


@pytest.mark.parametrize("mode", ["full", "encoder"])
@pytest.mark.parametrize("kind", KINDS)
def test_activation_checkpointing_keeps_less_and_changes_nothing(kind: str, mode: str) -> None:
    """``activation_checkpointing``: the same outputs and gradients (parameters and input: the generator step
    differentiates the ratio estimator by its input), with dropout drawing the same masks in the recompute,
    while the forward pass keeps a fraction of the activations; without gradients the blocks just run."""
    extra = {"dropout": 0.3} if kind == "unet" else {}
    plain = build(kind, mode, num_labels=4, **extra)
    perturb(plain)
    ckpt = build(kind, mode, num_labels=4, activation_checkpointing=True, **extra)
    ckpt.load_state_dict(plain.state_dict())
    x, s, y = inputs(kind, batch=4, num_labels=4)
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(7)  # the same dropout masks (U-Net) and label dropout draws in both passes
        xi = x.clone().requires_grad_(True)
        out = model(xi, s, y)
        out.square().sum().backward()
        grads.append((out.detach(), xi.grad, {n: p.grad for n, p in model.named_parameters()}))
    (out0, gx0, gp0), (out1, gx1, gp1) = grads
    torch.testing.assert_close(out1, out0, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gx1, gx0, atol=1e-6, rtol=1e-5)
    for name, g in gp0.items():
        torch.testing.assert_close(gp1[name], g, atol=1e-6, rtol=1e-5, msg=name)
    plain.eval()
    ckpt.eval()
    xi = x.clone().requires_grad_(True)
    kept, kept_ckpt = (saved_bytes(lambda m=m: m(xi, s, y)) for m in (plain, ckpt))
    assert kept_ckpt < 0.6 * kept, (kept_ckpt, kept)
    with torch.no_grad():  # samplers and VSD's frozen scores: no checkpoint machinery
        torch.testing.assert_close(ckpt(x, s, y), plain(x, s, y))


def test_activation_checkpointing_runs_compiled_blocks() -> None:
    """With ``strategy.compile_scope = "blocks"`` the checkpointed blocks are the compiled ones (dynamo only:
    the eager backend), through what a DiffRatio run does to them: batch sizes that change between the ratio
    step (2n) and the generator step (n), and passes with the parameters frozen (gradient by the input only).
    The recompute must pick the graph the forward pass ran, or torch raises a CheckpointError; gradients
    unchanged."""
    from diffratio_builtins.strategies.common import compile_blocks

    plain = build("dit", num_labels=4)
    perturb(plain)
    ckpt = build("dit", num_labels=4, activation_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    compile_blocks(ckpt, backend="eager")
    for batch, freeze in ((8, False), (4, True), (8, False), (6, False), (4, True)):
        x, s, y = inputs("dit", batch=batch, num_labels=4)
        grads = []
        for model in (plain, ckpt):
            model.zero_grad()
            model.requires_grad_(not freeze)
            xi = x.clone().requires_grad_(True)
            model(xi, s, y).square().sum().backward()
            grads.append([xi.grad] + [p.grad for p in model.parameters()])
            model.requires_grad_(True)
        (gx0, *gp0), (gx1, *gp1) = grads
        torch.testing.assert_close(gx1, gx0, atol=1e-5, rtol=1e-4)
        for g0, g1 in zip(gp0, gp1, strict=True):
            if freeze:
                assert g0 is None and g1 is None
            else:
                torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-4)
    assert all(b._compiled_call_impl is not None for b in ckpt.blocks)
