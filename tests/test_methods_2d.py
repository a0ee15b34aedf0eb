"""The `edm`, `vsd` and `diffratio` methods on 2-D data: CLI runs of tiny recipes, and VSD's gradient.

The CLI runs chain as in practice: `edm` pretrains, then `vsd` and `diffratio` start from its run
directory. The gradient checks compare VSD's surrogate with the closed-form reverse-KL gradient on
Gaussians, where teacher and fake scores are exact.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import Tensor, nn

from diffratio import DiffRatioError
from diffratio.analytic import GaussianMixture
from diffratio.cli import train
from diffratio.inference import load_pretrained_denoiser
from diffratio.losses import generator_loss
from diffratio_builtins.divergences import ReverseKL
from diffratio_builtins.methods.vsd import score_difference, vsd_generator_loss

from conftest import logged

ROOT = Path(__file__).resolve().parents[1]
TINY = ["run.batch_size=64", "run.log_every=10", "run.checkpoint_every=1000", "backbone.hidden=32",
        "backbone.depth=1", "backbone.embed_dim=16", "dataset.num_points=2000",
        "metrics.energy-distance.num_samples=200", "strategy.threads=1", "loggers.console={}"]


def dr_train(recipe: str, run_dir: Path, *sets: str) -> tuple[int, str]:
    """Run ``dr-train`` in-process; returns the exit code and everything it printed."""
    args = [str(ROOT / "recipes" / recipe), "--run-dir", str(run_dir), "--no-progress"]
    for s in (*TINY, *sets):
        args += ["--set", s]
    result = CliRunner().invoke(train, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def check_run(run_dir: Path, output: str, steps: int, losses: tuple[str, ...]) -> None:
    assert (run_dir / "run.json").exists()
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"{steps:09d}"
    assert list((run_dir / "samples").glob("*.png"))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == steps and math.isfinite(metrics[-1]["energy-distance/energy_distance"])
    values = logged(output)
    for key in losses:
        assert key in values, f"{key} not logged: {sorted(values)}"
        assert all(math.isfinite(v) for v in values[key])


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny `edm` pretraining from recipes/toy2d-pretrain.toml (shared by the tests below)."""
    run_dir = tmp_path_factory.mktemp("runs") / "pretrain"
    code, out = dr_train("toy2d-pretrain.toml", run_dir, "run.steps=60", "method.sample_steps=6")
    assert code == 0, out
    check_run(run_dir, out, 60, ("loss/denoising",))
    return run_dir


def test_edm_pretraining_exposes_its_ema_denoiser(edm_run: Path) -> None:
    state = load_pretrained_denoiser(edm_run)
    assert "backbone.inp.weight" in state and state["backbone.inp.weight"].shape == (32, 2)
    ckpt = torch.load(edm_run / "checkpoints" / f"{60:09d}" / "state.pt", weights_only=True)
    # the EMA differs from the trained weights (decay < 1 and 60 steps)
    raw = ckpt["method"]["model"]["model"]["backbone.inp.weight"]
    assert not torch.equal(raw, state["backbone.inp.weight"])


def test_vsd_from_edm_run_dir_and_resume(edm_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "vsd"
    sets = (f"method.init={json.dumps(str(edm_run))}", "method.warmup_fake_steps=5")
    code, out = dr_train("toy2d-vsd.toml", run_dir, "run.steps=30", *sets)
    assert code == 0, out
    check_run(run_dir, out, 30, ("loss/fake", "loss/generator", "generator/denoiser_gap"))
    state = torch.load(run_dir / "checkpoints" / f"{30:09d}" / "state.pt", weights_only=True)["method"]
    assert {"generator", "fake", "generator_ema"} <= set(state)
    assert "optimizer" in state["generator"] and "optimizer" in state["fake"]
    # the same command with more steps resumes from the checkpoint (teacher reloaded from method.init)
    code, out = dr_train("toy2d-vsd.toml", run_dir, "run.steps=40", *sets)
    assert code == 0, out
    assert "resuming from step 30" in out
    check_run(run_dir, out, 40, ("loss/fake", "loss/generator"))


@pytest.mark.parametrize("which", ["edm", "vsd"])
def test_dr_sample_of_edm_and_vsd_runs(which: str, edm_run: Path, tmp_path: Path) -> None:
    """``dr-sample`` builds a finished run's sampler (no method.init, no optimiser) and draws from it."""
    import numpy as np

    from diffratio.sampling import sample_run

    run_dir = edm_run
    if which == "vsd":
        run_dir = tmp_path / "vsd"
        code, out = dr_train("toy2d-vsd.toml", run_dir, "run.steps=5", f"method.init={json.dumps(str(edm_run))}")
        assert code == 0, out
    sample_run(run_dir, num=50, out=tmp_path / "s.npz")
    samples = np.load(tmp_path / "s.npz")["samples"]
    assert samples.shape == (50, 2) and np.isfinite(samples).all()


def test_diffratio_from_edm_run_dir(edm_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "dr"
    code, out = dr_train("toy2d.toml", run_dir, "run.steps=30", f"method.init={json.dumps(str(edm_run))}",
                         "method.warmup_ratio_steps=5")
    assert code == 0, out
    check_run(run_dir, out, 30, ("loss/ratio", "loss/generator"))


def build_method(recipe: str, run_dir: Path, *sets: str) -> object:
    """The method of a tiny recipe, built but not trained."""
    from diffratio.engine import build_run
    from diffratio.recipe import load_recipe
    from diffratio.registry import default_registry

    resolved = load_recipe(ROOT / "recipes" / recipe, [*TINY, *sets], registry=default_registry())
    return build_run(resolved, run_dir, default_registry()).method


def test_vsd_and_diffratio_start_from_the_pretrained_ema(edm_run: Path, tmp_path: Path) -> None:
    pre = load_pretrained_denoiser(edm_run)
    init = f"method.init={json.dumps(str(edm_run))}"
    vsd = build_method("toy2d-vsd.toml", tmp_path / "v", init)
    for net in (vsd.teacher, vsd.fake.model, vsd.gen.model.denoiser):
        for k, v in net.state_dict().items():
            torch.testing.assert_close(v, pre[k], rtol=0, atol=0)
    assert not any(p.requires_grad for p in vsd.teacher.parameters())
    dr = build_method("toy2d.toml", tmp_path / "d", init)
    for k, v in dr.gen.model.denoiser.state_dict().items():
        torch.testing.assert_close(v, pre[k], rtol=0, atol=0)
    torch.testing.assert_close(dr.ratio.model.backbone.inp.weight, pre["backbone.inp.weight"], rtol=0, atol=0)


def test_vsd_needs_init_and_a_matching_teacher(edm_run: Path, tmp_path: Path) -> None:
    code, out = dr_train("toy2d-vsd.toml", tmp_path / "a", "run.steps=2", "method.init=\"\"")
    assert code == 2 and "needs method.init" in out  # refused before any step
    init = f"method.init={json.dumps(str(edm_run))}"
    code, out = dr_train("toy2d-vsd.toml", tmp_path / "b", "run.steps=2", init, "backbone.hidden=48")
    assert code == 2 and "differs from the backbone of the run it initialises from" in out  # the preflight
    assert "hidden: 32 there, 48 here" in out
    with pytest.raises(DiffRatioError, match="cannot initialise the teacher") as err:  # built past the preflight
        build_method("toy2d-vsd.toml", tmp_path / "c", init, "backbone.hidden=48")
    assert "backbone.inp.weight: checkpoint (32, 2) vs model (48, 2)" in str(err.value)


# --------------------------------------------------------------------------------------------------
# The VSD gradient on Gaussians, where both scores are exact
# --------------------------------------------------------------------------------------------------


class ExactDenoiser(nn.Module):
    """``D(x, sigma) = x + sigma^2 grad log p_sigma(x)`` of an analytic mixture (Tweedie)."""

    def __init__(self, mix: GaussianMixture) -> None:
        super().__init__()
        self.mix = mix

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return x + sigma[:, None] ** 2 * self.mix.score(x, sigma)


def whitened(n: int, k: int, seed: int) -> Tensor:
    """(n, k) samples whose empirical mean is 0 and covariance exactly I (so Gaussian moments are exact)."""
    a = torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    a = a - a.mean(0)
    q, _ = torch.linalg.qr(a)
    return q * math.sqrt(n)


def gaussian_kl(m1: Tensor, c1: Tensor, m2: Tensor, c2: Tensor) -> Tensor:
    """KL(N(m1, c1) || N(m2, c2))."""
    d = m1.shape[0]
    inv = torch.linalg.inv(c2)
    diff = m2 - m1
    return 0.5 * (torch.trace(inv @ c1) + diff @ inv @ diff - d + torch.logdet(c2) - torch.logdet(c1))


@pytest.mark.parametrize("d", [1, 2])
def test_vsd_surrogate_gradient_is_the_reverse_kl_gradient(d: int) -> None:
    """Generator x = mu + L z; data N(m, B). With exact scores, grad of the surrogate (per-sample sigma,
    weight w(sigma)) equals sum_sigma w(sigma) grad KL(q_sigma || p_sigma), computed in closed form."""
    g = torch.Generator().manual_seed(d)
    m = torch.randn(d, generator=g, dtype=torch.float64)
    b_half = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov_p = b_half @ b_half.T + 0.3 * torch.eye(d, dtype=torch.float64)
    mu = torch.randn(d, generator=g, dtype=torch.float64).requires_grad_(True)
    lower = (torch.eye(d, dtype=torch.float64) * 0.7 + 0.2 * torch.randn(d, d, generator=g, dtype=torch.float64)
             .tril(-1)).requires_grad_(True)
    eye = torch.eye(d, dtype=torch.float64)
    sigmas = [0.05, 0.4, 1.5]
    weight = {s: s**2 for s in sigmas}  # the "sigma2" weighting
    n = 2048

    # VSD surrogate: teacher = exact data denoiser, fake = exact denoiser of the current generator
    teacher = ExactDenoiser(GaussianMixture(m[None], cov_p[None]))
    fake = ExactDenoiser(GaussianMixture(mu.detach()[None], (lower @ lower.T).detach()[None]))
    losses = []
    for i, s in enumerate(sigmas):
        ze = whitened(n, 2 * d, seed=10 + i)
        z, eps = ze[:, :d], ze[:, d:]
        x_sigma = mu + z @ lower.T + s * eps
        sigma = torch.full((n,), s, dtype=torch.float64)
        diff = score_difference(fake, teacher, x_sigma.detach(), sigma)
        losses.append(vsd_generator_loss(x_sigma, diff, torch.full((n,), weight[s], dtype=torch.float64)))
    g_mu, g_l = torch.autograd.grad(sum(losses) / len(sigmas), (mu, lower))

    kl = sum(weight[s] * gaussian_kl(mu, lower @ lower.T + s**2 * eye, m, cov_p + s**2 * eye)
             for s in sigmas) / len(sigmas)
    k_mu, k_l = torch.autograd.grad(kl, (mu, lower))
    torch.testing.assert_close(g_mu, k_mu, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(g_l, k_l, rtol=1e-9, atol=1e-9)
    assert k_mu.abs().max() > 1e-3  # the check is not trivially zero


def test_vsd_and_diffratio_surrogates_agree_with_an_exact_ratio() -> None:
    """With exact scores / exact log ratio, VSD's surrogate and DiffRatio's reverse-KL surrogate have the
    same gradient sample by sample (any mixtures, not only Gaussians)."""
    g = torch.Generator().manual_seed(5)
    p = GaussianMixture(torch.randn(3, 2, generator=g, dtype=torch.float64) * 2, torch.tensor([0.1, 0.3, 0.2]))
    shift = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    base = GaussianMixture(torch.randn(2, 2, generator=g, dtype=torch.float64), torch.tensor([0.5, 0.2]))
    n = 256
    sigma = torch.exp(torch.randn(n, generator=g, dtype=torch.float64))
    x0 = base.sample(n, g)
    x_sigma = x0 + shift + sigma[:, None] * torch.randn(n, 2, generator=g, dtype=torch.float64)
    q = GaussianMixture(base.means + shift.detach(), base.covs)  # the generator's law, parameters frozen
    w = sigma**2

    diff = score_difference(ExactDenoiser(q), ExactDenoiser(p), x_sigma.detach(), sigma)
    (g_vsd,) = torch.autograd.grad(vsd_generator_loss(x_sigma, diff, w), shift)
    f = q.log_prob(x_sigma, sigma) - p.log_prob(x_sigma, sigma)
    (g_dr,) = torch.autograd.grad(generator_loss(f, ReverseKL(), w), shift)
    torch.testing.assert_close(g_vsd, g_dr, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# ClassifierRatio parameterisations used by the estimator-bias benchmark
# --------------------------------------------------------------------------------------------------


def _classifier(**options: object) -> nn.Module:
    from diffratio_builtins.backbones.mlp import MLPBackbone
    from diffratio_builtins.models import ClassifierRatio

    torch.manual_seed(0)
    backbone = MLPBackbone(MLPBackbone.Config(hidden=16, depth=1, embed_dim=8), data_shape=(2,), mode="encoder")
    return ClassifierRatio(ClassifierRatio.Config(**options), backbone=backbone, sigma_data=0.7)


def test_classifier_default_is_a_zero_linear_head() -> None:
    clf = _classifier()
    assert {k for k in clf.state_dict() if k.startswith("head")} == {"head.weight", "head.bias"}
    x, sigma = torch.randn(5, 2), torch.rand(5) + 0.1
    assert torch.equal(clf(x, sigma), torch.zeros(5))
    with torch.no_grad():
        clf.head.bias.fill_(0.3)
    torch.testing.assert_close(clf(x, sigma), torch.full((5,), 0.3))


def test_classifier_output_scales_and_energy_form() -> None:
    x, sigma = torch.randn(6, 2), torch.rand(6) + 0.1
    for scale, expected in (("inv_sigma", 1 / sigma), ("inv_sigma2", 0.7 * (sigma**2 + 0.49).sqrt() / sigma**2)):
        clf = _classifier(output_scale=scale)
        with torch.no_grad():
            clf.head.bias.fill_(1.0)
        torch.testing.assert_close(clf(x, sigma), expected)
    # energy form with a constant head: f = (|x - A|^2 - |x - B|^2) / (2 sigma^2), A, B = sigma_data * bias
    clf = _classifier(logit_form="energy", head_hidden=8)
    assert torch.equal(clf(x, sigma), torch.zeros(6))  # zero-initialised last layer: f = 0
    last = clf.head[-1]
    with torch.no_grad():
        last.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.25]))
    a, b = 0.7 * torch.tensor([0.5, -1.0]), 0.7 * torch.tensor([2.0, 0.25])
    f = (((x - a) ** 2).sum(1) - ((x - b) ** 2).sum(1)) / (2 * sigma**2)
    torch.testing.assert_close(clf(x, sigma), f)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(clf(xg, sigma).sum(), xg)
    torch.testing.assert_close(grad, (b - a)[None] / sigma[:, None] ** 2)


def test_estimator_bias_benchmark_runs_tiny(tmp_path: Path) -> None:
    """benchmarks/estimator_bias.py end to end at a few steps: table, CSV and figures are written."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("estimator_bias", ROOT / "benchmarks" / "estimator_bias.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.N_EVAL = 200
    assert bench.main(["--out", str(tmp_path), "--seeds", "2", "--budgets", "3,6", "--workers", "1"]) == 0
    summary = (tmp_path / "estimator_bias.csv").read_text().splitlines()
    assert summary[0].startswith("generator,data,size,estimator,budget,sigma,seeds,rel_error_mean")
    rows = [line.split(",") for line in summary[1:]]
    estimators = {r[3] for r in rows}
    assert {"vsd", "vsd:pretrained-teacher", "diffratio:plain", "diffratio:inv_sigma+snr"} <= estimators
    assert {r[2] for r in rows} == {"equal per network", "equal total"}
    assert all(math.isfinite(float(r[7])) and -1 <= float(r[9]) <= 1 for r in rows)
    table = (tmp_path / "estimator_bias_table.md").read_text()
    assert "| far | finite | 6 | vsd |" in table and "(equal total)" in table and "| pooled w=1 |" in table
    assert len(list(tmp_path.glob("estimator_bias_*_6.png"))) == 2


def test_toy2d_vsd_recipe_shares_every_setting_with_toy2d() -> None:
    """The VSD baseline recipe differs from the DiffRatio recipe only in what is specific to each method."""
    import tomllib

    dr = tomllib.loads((ROOT / "recipes" / "toy2d.toml").read_text())
    vsd = tomllib.loads((ROOT / "recipes" / "toy2d-vsd.toml").read_text())
    for table in ("dataset", "backbone", "generator", "schedule", "strategy", "metrics"):
        assert dr[table] == vsd[table], table
    assert {k: v for k, v in dr["run"].items() if k != "name"} == {k: v for k, v in vsd["run"].items() if k != "name"}
    m1, m2 = dr["method"], vsd["method"]
    assert m1["generator_optimizer"] == m2["generator_optimizer"] and m1["ema_decay"] == m2["ema_decay"]
    # the auxiliary network's learning rate is each method's own; every other optimiser setting is shared
    aux = ({k: v for k, v in m1["ratio_optimizer"].items() if k != "lr"},
           {k: v for k, v in m2["fake_optimizer"].items() if k != "lr"})
    assert aux[0] == aux[1] and m1["ratio_steps"] == m2["fake_steps"]
    assert m1["warmup_ratio_steps"] == m2["warmup_fake_steps"]
