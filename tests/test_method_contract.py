"""The Method contract: inference without training parts, one handle per purpose, warm-up as loop steps,
the EMA skip decided on the device, and the divergences as presets of one f-divergence."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from diffratio import DiffRatioError, Trainable
from diffratio.engine import build_run
from diffratio.inference import load_pretrained_denoiser, load_sampler
from diffratio.recipe import load_recipe
from diffratio.registry import default_registry
from diffratio.sampling import export_run, sample_run
from diffratio_builtins import divergences
from diffratio_builtins.methods.common import update_ema

from conftest import RECIPES, TINY, run_cli, sets


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny edm pretraining and a tiny diffratio run started from it."""
    root = tmp_path_factory.mktemp("contract")
    out = {"edm": root / "edm", "diffratio": root / "dr"}
    res = run_cli("dr-train", str(RECIPES / "toy2d-pretrain.toml"), "--run-dir", str(out["edm"]), "--no-progress",
                  *sets("run.steps=10", "run.batch_size=64", "run.checkpoint_every=10", "run.sample_every=0",
                        "backbone.hidden=32", "backbone.depth=1", "dataset.num_points=2000", "method.sample_steps=3",
                        "metrics.energy-distance.num_samples=200", "run.min_free_disk_gb=0.01",
                        "loggers.tensorboard=false"))
    assert res.returncode == 0, res.stderr
    res = run_cli("dr-train", str(RECIPES / "toy2d.toml"), "--run-dir", str(out["diffratio"]), "--no-progress",
                  *sets(*TINY, "loggers.tensorboard=false", f"method.init={json.dumps(str(out['edm']))}"))
    assert res.returncode == 0, res.stderr
    return out


def test_dr_sample_builds_no_optimiser_and_loads_no_training_data(runs: dict[str, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def forbidden(what: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            calls.append(what)
            raise AssertionError(f"sampling must not call {what}")
        return record

    from diffratio_builtins.datasets import toy2d

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", forbidden("an optimiser constructor"))
    monkeypatch.setattr(toy2d.MixtureDataset, "_init", forbidden("the data set's loading"))
    sample_run(runs["diffratio"], num=40, out=tmp_path / "a.npz", candidates=4)
    export = export_run(runs["diffratio"], tmp_path / "m.pt")
    sample_run(export, num=40, out=tmp_path / "b.npz")
    sample_run(runs["edm"], num=8, out=tmp_path / "c.npz")
    assert calls == []
    with np.load(tmp_path / "a.npz") as d:
        assert d["samples"].shape == (40, 2) and d["log_weights"].shape == (40, 4)


def test_pretrained_denoiser_comes_from_the_method_contract(runs: dict[str, Path], tmp_path: Path) -> None:
    from_dir = load_pretrained_denoiser(runs["edm"])
    sampler = load_sampler(runs["edm"]).sampler
    assert set(sampler.networks()) == {"denoiser"}
    own = sampler.networks()["denoiser"].state_dict()
    assert from_dir.keys() == own.keys() and all(torch.equal(from_dir[k], own[k].cpu()) for k in own)
    from_export = load_pretrained_denoiser(export_run(runs["edm"], tmp_path / "edm.pt"))
    assert all(torch.equal(from_dir[k], from_export[k]) for k in from_dir)
    with pytest.raises(DiffRatioError, match="trains no diffusion denoiser"):
        load_pretrained_denoiser(runs["diffratio"])


# ---- one handle per purpose ----


class Probe(Trainable):
    """A Trainable whose ``infer`` runs a separate copy of the model, so a forward hook tells which ran."""

    def __init__(self, inner: Trainable, ran: list[str], name: str) -> None:
        self.inner, self.optim = inner, inner.optim
        self.compiled = copy.deepcopy(inner.model)  # stands in for the strategy's compiled module
        inner.model.register_forward_hook(lambda *_: ran.append(f"{name}.model"))
        self.compiled.register_forward_hook(lambda *_: ran.append(f"{name}.infer"))

    @property
    def model(self) -> nn.Module:
        return self.inner.model

    def forward(self, *args: Any) -> Tensor:
        return self.inner.forward(*args)

    def infer(self, *args: Any) -> Tensor:
        return self.compiled(*args)

    @property
    def last_step_ok(self) -> Tensor | bool:  # type: ignore[override]
        return self.inner.last_step_ok

    def backward(self, loss: Tensor) -> None:
        self.inner.backward(loss)

    def step(self) -> dict[str, Tensor]:
        return self.inner.step()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state)


def build_method(recipe: str, run_dir: Path, *extra: str) -> Any:
    tiny = [t.replace("warmup_ratio_steps", "warmup_fake_steps") if "vsd" in recipe else t for t in TINY]
    resolved = load_recipe(RECIPES / recipe, [*tiny, *extra], registry=default_registry())
    return build_run(resolved, run_dir, default_registry()).method


@pytest.mark.parametrize("recipe", ["toy2d.toml", "toy2d-vsd.toml"])
def test_auxiliary_step_samples_through_infer_and_generator_step_trains_through_forward(
        recipe: str, runs: dict[str, Path], tmp_path: Path) -> None:
    """VSD's fake-score step and DiffRatio's ratio step draw their generated samples through the generator's
    inference path (compiled where the strategy compiles), the generator step trains through its forward."""
    method = build_method(recipe, tmp_path / "run", f"method.init={json.dumps(str(runs['edm']))}")
    ran: list[str] = []
    method.gen = Probe(method.gen, ran, "gen")
    method.aux = Probe(method.aux, ran, "aux")
    method.aux_step()
    assert "gen.infer" in ran and "gen.model" not in ran and "aux.model" in ran
    ran.clear()
    method.generator_step(0)
    assert "gen.model" in ran and "gen.infer" not in ran and "aux.infer" in ran and "aux.model" not in ran


# ---- warm-up as loop steps, the EMA skip on the device ----


def test_warmup_updates_are_loop_steps_and_the_ema_counts_generator_updates(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    method = build_method("toy2d.toml", tmp_path / "run", "method.warmup_ratio_steps=3", "method.ratio_steps=2")
    aux, gen = [], []
    monkeypatch.setattr(method, "aux_step", lambda: aux.append(1) or {"loss/ratio": torch.zeros(())})
    monkeypatch.setattr(method, "generator_step", lambda update: gen.append(update) or {})
    for step in range(5):
        method.train_step(step)
    assert len(aux) == 3 + 2 * 2 and gen == [0, 1]


def test_a_skipped_update_leaves_the_ema_and_an_applied_one_matches_the_host_path() -> None:
    torch.manual_seed(0)
    src, ema = nn.Linear(4, 3), nn.Linear(4, 3)
    host = copy.deepcopy(ema)
    before = copy.deepcopy(ema.state_dict())
    update_ema(ema, src, 0.9, 50, applied=torch.tensor(False))
    assert all(torch.equal(before[k], v) for k, v in ema.state_dict().items())
    update_ema(ema, src, 0.9, 50, applied=torch.tensor(True))
    update_ema(host, src, 0.9, 50, applied=True)
    assert all(torch.equal(host.state_dict()[k], v) for k, v in ema.state_dict().items())
    assert not all(torch.equal(before[k], v) for k, v in ema.state_dict().items())


# ---- divergences ----


@pytest.mark.parametrize(("preset", "function", "config"), [
    (divergences.ReverseKL, "reverse-kl", {}), (divergences.ForwardKL, "kl", {"max_log_weight": 5.0}),
    (divergences.JensenShannon, "js", {})])
def test_named_divergences_are_presets_of_the_f_divergence(preset: type, function: str, config: dict) -> None:
    f = torch.linspace(-40, 40, 1001)
    generic = divergences.FDivergence(divergences.FDivergence.Config(function=function))
    named = preset(preset.Config(**config))
    assert issubclass(preset, divergences.FDivergence)
    assert torch.equal(named.weight(f), generic.weight(f))
    r = torch.linspace(0.01, 5, 50)
    assert torch.equal(named.F(r), generic.F(r))
