"""The image path end to end on CPU: a tiny EDM pretraining on real Fashion-MNIST, then DiffRatio
initialised from it (weights checked tensor by tensor), then sampling, all through the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from diffratio.engine import build_run
from diffratio.inference import load_pretrained_denoiser
from diffratio.recipe import load_recipe
from diffratio.registry import default_registry

from conftest import RECIPES, run_cli, sets

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
if not FASHION.exists():
    if os.environ.get("DIFFRATIO_REQUIRE_DATA"):
        raise FileNotFoundError(f"{FASHION} is missing: apt-get install dataset-fashion-mnist")
    pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)", allow_module_level=True)

TINY_IMAGES = ["run.steps=3", "run.batch_size=8", "run.log_every=1", "run.checkpoint_every=3", "run.sample_every=0",
               "backbone.model_channels=16", "backbone.channel_mult=[1, 2]", "backbone.num_blocks=1",
               "backbone.attn_resolutions=[16]", "dataset.max_images=128", "strategy.precision='fp32'",
               "run.min_free_disk_gb=0.01", "loggers.tensorboard=false"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("pre") / "run"
    res = run_cli("dr-train", str(RECIPES / "fashion-mnist-pretrain.toml"), "--run-dir", str(run_dir),
                  "--no-progress", *sets(*TINY_IMAGES, "method.sample_steps=2"))
    assert res.returncode == 0, res.stderr
    return run_dir


def test_diffratio_starts_from_the_pretrained_denoiser(pretrained: Path) -> None:
    reg = default_registry()
    recipe = load_recipe(RECIPES / "fashion-mnist.toml", [*TINY_IMAGES, f"method.init='{pretrained}'"], registry=reg)
    run = build_run(recipe, pretrained.parent / "dr-check", reg)
    ema = load_pretrained_denoiser(pretrained)
    gen = run.method.gen.model.denoiser.state_dict()
    assert gen.keys() == ema.keys()
    for k, v in ema.items():
        assert torch.equal(gen[k], v), k
    enc = run.method.ratio.model.backbone.state_dict()
    assert 0 < len(enc) < len(ema)
    for k, v in enc.items():
        assert torch.equal(v, ema[f"backbone.{k}"]), k
    counts = run.method.parameter_counts()
    assert counts["ratio"] < counts["generator"]


def test_chain_through_the_cli(pretrained: Path, tmp_path: Path) -> None:
    res = run_cli("dr-train", str(RECIPES / "fashion-mnist.toml"), "--run-dir", str(tmp_path / "dr"), "--no-progress",
                  *sets(*TINY_IMAGES, f"method.init='{pretrained}'", "method.warmup_ratio_steps=1"))
    assert res.returncode == 0, res.stderr
    assert "parameters: generator" in res.stdout and "ratio" in res.stdout
    out = run_cli("dr-sample", str(tmp_path / "dr"), "--num", "20", "--out", str(tmp_path / "s.npz"),
                  "--grid", str(tmp_path / "g.png"))
    assert out.returncode == 0, out.stderr
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (20, 1, 32, 32) and f["images"].dtype == np.uint8
    heun = run_cli("dr-sample", str(pretrained), "--num", "4", "--out", str(tmp_path / "h.npz"))
    assert heun.returncode == 0, heun.stderr


def test_mismatched_backbone_names_the_setting(pretrained: Path, tmp_path: Path) -> None:
    """The preflight compares the recipe's backbone with the one of the run it initialises from."""
    res = run_cli("dr-train", str(RECIPES / "fashion-mnist.toml"), "--run-dir", str(tmp_path / "bad"),
                  *sets(*TINY_IMAGES, f"method.init='{pretrained}'", "backbone.model_channels=8"))
    assert res.returncode == 2
    assert "differs from the backbone of the run it initialises from" in res.stderr
    assert "model_channels: 16 there, 8 here" in res.stderr
    assert "Traceback" not in res.stderr


def test_vsd_recipe_trains_from_the_same_pretraining(pretrained: Path, tmp_path: Path) -> None:
    """recipes/fashion-mnist-vsd.toml: the baseline of benchmarks/quality.py runs from the shared pretraining."""
    res = run_cli("dr-train", str(RECIPES / "fashion-mnist-vsd.toml"), "--run-dir", str(tmp_path / "vsd"),
                  "--no-progress", *sets(*TINY_IMAGES, f"method.init='{pretrained}'", "method.warmup_fake_steps=1"))
    assert res.returncode == 0, res.stderr
    assert "parameters: generator" in res.stdout and "fake_score" in res.stdout


def test_activation_checkpointing_trains_to_the_same_parameters(pretrained: Path, tmp_path: Path) -> None:
    """DiffRatio with ``backbone.activation_checkpointing`` (generator, and the ratio estimator that the
    generator step differentiates by its input) ends where the run without it ends."""
    from diffratio.checkpoint import find_latest, load_state

    states = []
    for flag in ("false", "true"):
        run_dir = tmp_path / f"ckpt-{flag}"
        res = run_cli("dr-train", str(RECIPES / "fashion-mnist.toml"), "--run-dir", str(run_dir), "--no-progress",
                      *sets(*TINY_IMAGES, f"method.init='{pretrained}'", "method.warmup_ratio_steps=1",
                            f"backbone.activation_checkpointing={flag}"))
        assert res.returncode == 0, res.stderr
        states.append(load_state(find_latest(run_dir / "checkpoints"))["method"])
    plain, ckpt = states
    for part in ("generator", "ratio"):
        for name, value in plain[part].items():
            torch.testing.assert_close(ckpt[part][name], value, atol=1e-6, rtol=1e-5, msg=f"{part}.{name}")
