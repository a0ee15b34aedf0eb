"""The density ratio as a verifier (docs/concepts.md section 9) on 2-D data with a known ratio.

Data p: the 8-Gaussian ring; a deliberately wrong generator q = N(0, 1.5^2 I) (too wide, no modes), with
its exact log density, so ``f = log q_sigma - log p_sigma`` is exact. Sampling-importance-resampling
must move samples toward p as N grows, with the exact and with a learned ratio; best-of-N concentrates
samples on the modes of p/q.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from diffratio import DiffRatioError
from diffratio.analytic import GaussianMixture, energy_distance, ring
from diffratio.edm import EDMDenoiser
from diffratio.losses import ratio_loss
from diffratio.verifier import (
    DEFAULT_VERIFIER_SIGMA,
    choose,
    effective_sample_size,
    run_verifier,
    sample_with_verifier,
)
from diffratio_builtins.backbones.mlp import MLPBackbone
from diffratio_builtins.methods.edm import EDM, HeunSampler
from diffratio_builtins.methods.onestep import GeneratorSampler
from diffratio_builtins.models import ClassifierRatio, EDMGenerator

from conftest import RECIPES, TINY, run_cli, sets

P = ring(8, 2.0, 0.1)
Q_STD = 1.5
Q = GaussianMixture(torch.zeros(1, 2), torch.tensor([Q_STD**2]))


def wrong_generator(z: Tensor, labels: Tensor | None) -> Tensor:
    """Samples of q = N(0, 1.5^2 I) from standard-normal latents."""
    return Q_STD * z.double()


def exact_log_ratio(x: Tensor, sigma: Tensor, labels: Tensor | None) -> Tensor:
    s = float(sigma[0])  # one sigma_v for the whole batch: scalar sigma keeps log_prob cheap
    return Q.log_prob(x, s) - P.log_prob(x, s)


def reference(n: int = 2000) -> Tensor:
    return P.sample(n, torch.Generator().manual_seed(1))


def within_mode(x: Tensor) -> float:
    """Mean distance to the nearest ring centre: the spread of samples inside the modes."""
    return float(torch.cdist(x.double(), P.means).min(1).values.mean())


def sir_curve(log_ratio, sigma_v: float, num: int = 1000) -> list[float]:  # noqa: ANN001
    ref = reference()
    out = []
    for n in (1, 4, 16, 64):
        res = sample_with_verifier(wrong_generator, log_ratio, num=num, candidates=n, latent_shape=(2,),
                                   select="sir", sigma_v=sigma_v, rng=torch.Generator().manual_seed(0),
                                   max_batch=1 << 16)
        out.append(energy_distance(res.samples, ref))
    return out


# ---- selection and diagnostics ----


def test_choose_best_is_argmax_and_sir_follows_softmax() -> None:
    probs = torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64)
    log_w = (probs.log() + 3.0).expand(40000, 3)  # a constant shift must not matter
    assert (choose(log_w, "best", torch.Generator()) == 2).all()
    picks = choose(log_w, "sir", torch.Generator().manual_seed(0))
    freq = torch.bincount(picks, minlength=3).double() / picks.numel()
    assert torch.allclose(freq, probs, atol=0.01), freq


def test_effective_sample_size() -> None:
    lw = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -50.0, -50.0, -50.0], [1000.0, 1000.0, -1000.0, -1000.0]])
    assert torch.allclose(effective_sample_size(lw), torch.tensor([4.0, 1.0, 2.0], dtype=torch.float64))


def test_same_seed_same_output_and_chunking_does_not_matter() -> None:
    kw = dict(num=50, candidates=8, latent_shape=(2,), select="sir", sigma_v=0.0)
    a = sample_with_verifier(wrong_generator, exact_log_ratio, rng=torch.Generator().manual_seed(5),
                             max_batch=400, **kw)
    b = sample_with_verifier(wrong_generator, exact_log_ratio, rng=torch.Generator().manual_seed(5),
                             max_batch=7, **kw)
    c = sample_with_verifier(wrong_generator, exact_log_ratio, rng=torch.Generator().manual_seed(6),
                             max_batch=400, **kw)
    assert torch.equal(a.samples, b.samples) and torch.equal(a.chosen, b.chosen)
    assert torch.allclose(a.log_weights, b.log_weights)
    assert not torch.equal(a.samples, c.samples)
    assert a.log_weights.shape == (50, 8) and a.ess.shape == (50,)
    assert ((a.ess >= 1 - 1e-9) & (a.ess <= 8 + 1e-9)).all()
    # the returned sample is the chosen candidate's: its exact log weight is the recorded one
    picked = a.log_weights[torch.arange(50), a.chosen]
    assert torch.allclose(-exact_log_ratio(a.samples, torch.zeros(50), None), picked)


def test_temperature_divides_the_log_weights_and_leaves_best_alone() -> None:
    kw = dict(num=400, candidates=8, latent_shape=(2,), sigma_v=0.0)

    def draw(select: str, t: float):  # noqa: ANN202
        return sample_with_verifier(wrong_generator, exact_log_ratio, select=select, temperature=t,
                                    rng=torch.Generator().manual_seed(3), **kw)

    plain, hot = draw("sir", 1.0), draw("sir", 4.0)
    # the same candidates (same latents), their log weights divided by T
    assert torch.allclose(hot.log_weights, plain.log_weights / 4.0)
    assert hot.ess.mean() > plain.ess.mean()  # flatter weights: more effective candidates
    assert torch.equal(draw("best", 1.0).chosen, draw("best", 4.0).chosen)
    # a very high temperature ignores the verifier: the picks are uniform over the 8 candidates
    flat = sample_with_verifier(wrong_generator, exact_log_ratio, select="sir", temperature=1e9,
                                rng=torch.Generator().manual_seed(3), **{**kw, "num": 8000})
    assert torch.allclose(flat.ess, torch.full((8000,), 8.0, dtype=torch.float64))
    assert torch.bincount(flat.chosen, minlength=8).min() > 850  # 1000 each, binomial sd 30
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(DiffRatioError, match="temperature must be a finite number > 0"):
            draw("sir", bad)


def test_one_candidate_is_plain_sampling_without_the_ratio() -> None:
    res = sample_with_verifier(wrong_generator, None, num=20, candidates=1, latent_shape=(2,),
                               rng=torch.Generator().manual_seed(0))
    assert torch.equal(res.samples, Q_STD * torch.randn(20, 2, generator=torch.Generator().manual_seed(0)).double())
    assert (res.ess == 1).all() and (res.chosen == 0).all()
    with pytest.raises(DiffRatioError, match="needs a ratio estimator"):
        sample_with_verifier(wrong_generator, None, num=2, candidates=2, latent_shape=(2,))


# ---- exact ratio ----


def test_sir_with_the_exact_ratio_moves_samples_to_the_data() -> None:
    ed = sir_curve(exact_log_ratio, sigma_v=0.0)
    floor = energy_distance(P.sample(1000, torch.Generator().manual_seed(2)), reference())
    # measured: 0.088, 0.028, 0.0098, 0.0042; floor 0.0025
    for a, b in zip(ed, ed[1:], strict=False):
        assert b < a + floor, ed  # monotone up to the two-sample noise
    assert ed[3] < 0.15 * ed[0], ed
    assert ed[3] < 3 * floor, (ed, floor)


def test_best_of_n_concentrates_on_the_modes_and_sir_keeps_their_spread() -> None:
    kw = dict(num=500, candidates=256, latent_shape=(2,), sigma_v=0.0, max_batch=1 << 17)
    best = sample_with_verifier(wrong_generator, exact_log_ratio, select="best",
                                rng=torch.Generator().manual_seed(0), **kw).samples
    sir = sample_with_verifier(wrong_generator, exact_log_ratio, select="sir",
                               rng=torch.Generator().manual_seed(0), **kw).samples
    data = within_mode(reference(500))  # about 0.126 (= 0.1 * sqrt(pi / 2))
    # measured: best 0.065, sir 0.134, data 0.127
    assert within_mode(best) < 0.7 * data
    assert abs(within_mode(sir) - data) < 0.25 * data
    # best-of-N keeps every mode (q is symmetric) but collapses the spread inside each
    assert len(torch.cdist(best, P.means).argmin(1).unique()) == 8


# ---- learned ratio ----


def train_classifier(steps: int = 250, batch: int = 256) -> ClassifierRatio:
    """A small time-conditional ClassifierRatio trained with ratio_loss on samples of q (1) and p (0)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    backbone = MLPBackbone(MLPBackbone.Config(hidden=64, depth=2), data_shape=(2,), mode="encoder")
    ratio = ClassifierRatio(ClassifierRatio.Config(), backbone=backbone, sigma_data=1.4)
    opt = torch.optim.Adam(ratio.parameters(), lr=3e-3)
    for _ in range(steps):
        x = torch.cat([Q_STD * torch.randn(batch, 2, generator=g), P.sample(batch, g).float()])
        sigma = torch.exp(torch.empty(2 * batch).uniform_(math.log(0.01), math.log(0.5), generator=g))
        f = ratio(x + sigma[:, None] * torch.randn(2 * batch, 2, generator=g), sigma)
        loss = ratio_loss(f[:batch], f[batch:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ratio.eval()


def test_sir_with_a_learned_ratio_moves_samples_to_the_data() -> None:
    torch.set_num_threads(1)
    ratio = train_classifier()

    @torch.no_grad()
    def learned(x: Tensor, sigma: Tensor, labels: Tensor | None) -> Tensor:
        return ratio(x.float(), sigma.float())

    ed = sir_curve(learned, sigma_v=DEFAULT_VERIFIER_SIGMA)
    # measured: 0.088, 0.025, 0.021, 0.025 (this small classifier learns little more than the annulus)
    assert ed[1] < 0.5 * ed[0] and ed[2] < 0.5 * ed[0] and ed[3] < 0.5 * ed[0], ed
    with pytest.raises(DiffRatioError, match="verifier sigma > 0"):  # log sigma conditioning: not at 0
        sample_with_verifier(wrong_generator, learned, num=4, candidates=2, latent_shape=(2,), sigma_v=0.0)


# ---- runs: the method's callables, dr-sample and the single-file export ----


def test_run_verifier_refuses_methods_without_a_ratio_estimator() -> None:
    denoiser = EDMDenoiser(MLPBackbone(MLPBackbone.Config(hidden=8, depth=1), data_shape=(2,)), sigma_data=1.0)
    gen = EDMGenerator(EDMGenerator.Config(), denoiser=denoiser)
    vsd_like = GeneratorSampler(gen, device=torch.device("cpu"), data_shape=(2,), num_labels=0,
                                autocast=contextlib.nullcontext)
    with pytest.raises(DiffRatioError, match="no ratio estimator"):
        run_verifier(vsd_like)
    edm_like = HeunSampler(denoiser, EDM.Config(), device=torch.device("cpu"), data_shape=(2,), num_labels=0)
    with pytest.raises(DiffRatioError, match="no one-step generator"):
        run_verifier(edm_like)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("verifier") / "run"
    res = run_cli("dr-train", str(RECIPES / "toy2d.toml"), "--run-dir", str(run_dir), "--no-progress",
                  *sets(*TINY, "loggers.tensorboard=false"))
    assert res.returncode == 0, res.stderr
    return run_dir


def test_dr_sample_with_candidates_and_export(toy_run: Path, tmp_path: Path) -> None:
    res = run_cli("dr-sample", str(toy_run), "--num", "200", "--out", str(tmp_path / "sir.npz"), "--candidates",
                  "4", "--select", "sir", "--export", str(tmp_path / "model.pt"))
    assert res.returncode == 0, res.stderr
    assert "sir of 4 candidates" in res.stdout and "ms per sample" in res.stdout
    with np.load(tmp_path / "sir.npz") as d:
        assert d["samples"].shape == (200, 2) and np.isfinite(d["samples"]).all()
        assert d["log_weights"].shape == (200, 4) and np.isfinite(d["log_weights"]).all()
        assert ((d["ess"] >= 1 - 1e-9) & (d["ess"] <= 4 + 1e-9)).all()
        assert set(np.unique(d["chosen"])) <= {0, 1, 2, 3}
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert {"config", "data", "weights"} <= set(state) and set(state["weights"]) == {"generator", "ratio"}
    assert state["config"]["method"]["name"] == "diffratio"

    # the export alone is enough for sampling with the verifier; best-of-N keeps the largest weight
    res = run_cli("dr-sample", str(tmp_path / "model.pt"), "--num", "200", "--out", str(tmp_path / "best.npz"),
                  "--candidates", "4", "--select", "best")
    assert res.returncode == 0, res.stderr
    with np.load(tmp_path / "best.npz") as d:
        assert np.array_equal(d["chosen"], d["log_weights"].argmax(1))

    # a temperature divides the recorded log weights of the same candidates
    hot = tmp_path / "hot.npz"
    res = run_cli("dr-sample", str(toy_run), "--num", "200", "--out", str(hot), "--candidates", "4",
                  "--verifier-temperature", "2")
    assert res.returncode == 0, res.stderr
    assert "temperature 2" in res.stdout
    with np.load(tmp_path / "sir.npz") as plain, np.load(hot) as d:
        assert np.allclose(d["log_weights"], plain["log_weights"] / 2)
    res = run_cli("dr-sample", str(toy_run), "--num", "2", "--out", str(hot), "--candidates", "4",
                  "--verifier-temperature", "0")
    assert res.returncode != 0 and "--verifier-temperature" in res.stderr


def test_export_round_trip_in_python(toy_run: Path, tmp_path: Path) -> None:
    from diffratio.sampling import draw, export_run, load_sampler

    path = export_run(toy_run, tmp_path / "m.pt")
    a, b = load_sampler(toy_run), load_sampler(path)
    assert a.step == b.step == 30
    for net in ("generator", "ratio"):
        x, y = a.sampler.networks()[net].state_dict(), b.sampler.networks()[net].state_dict()
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    plain_a, _ = draw(a, 64, seed=3)
    plain_b, _ = draw(b, 64, seed=3)
    assert torch.equal(plain_a, plain_b)
    sir_a, diag_a = draw(a, 64, seed=3, candidates=4, batch=50)  # chunks of 12 outputs
    sir_b, diag_b = draw(b, 64, seed=3, candidates=4, batch=50)
    assert torch.equal(sir_a, sir_b) and np.allclose(diag_a["log_weights"], diag_b["log_weights"])
    assert diag_a["log_weights"].shape == (64, 4) and not torch.equal(sir_a, plain_a)
    with pytest.raises(DiffRatioError, match="verifier sigma > 0"):
        draw(b, 8, candidates=2, verifier_sigma=0.0)
    bad = tmp_path / "bad.pt"
    torch.save({"something": 1}, bad)
    with pytest.raises(DiffRatioError, match="not a diffratio export"):
        load_sampler(bad)


def test_the_runs_own_verifier_sigma_is_the_default(toy_run: Path) -> None:
    """``method.verifier_sigma`` (a recipe setting, e.g. 0.5 in the image recipes) is what sampling uses unless a
    sigma is given; without it, the library default. Changing it does not block resuming (sampling only)."""
    from diffratio.recipe import HARMLESS_ON_RESUME
    from diffratio.sampling import draw, load_sampler
    from diffratio.verifier import verifier_sigma_of

    run = load_sampler(toy_run)
    assert verifier_sigma_of(run.sampler) == DEFAULT_VERIFIER_SIGMA
    run.sampler.verifier_sigma = 0.7
    assert verifier_sigma_of(run.sampler) == 0.7
    _, own = draw(run, 32, seed=5, candidates=4)
    _, given = draw(run, 32, seed=5, candidates=4, verifier_sigma=0.7)
    _, other = draw(run, 32, seed=5, candidates=4, verifier_sigma=DEFAULT_VERIFIER_SIGMA)
    assert np.array_equal(own["log_weights"], given["log_weights"])
    assert not np.allclose(own["log_weights"], other["log_weights"])
    assert HARMLESS_ON_RESUME.match("method.verifier_sigma")


def test_load_sampler_of_an_earlier_checkpoint(tmp_path: Path) -> None:
    """``load_sampler(..., step=N)`` evaluates a run along its training (benchmarks/quality.py's FID curves)."""
    from diffratio.sampling import export_run
    from diffratio.sampling import load_sampler as load_run

    run_dir = tmp_path / "run"
    res = run_cli("dr-train", str(RECIPES / "toy2d.toml"), "--run-dir", str(run_dir), "--no-progress",
                  *sets(*TINY, "loggers.tensorboard=false", "run.keep_checkpoints=0"))
    assert res.returncode == 0, res.stderr
    runs = {step: load_run(run_dir, step=step) for step in (10, 20)}
    latest = load_run(run_dir)
    assert [runs[10].step, runs[20].step, latest.step] == [10, 20, 30]
    assert 0 < runs[10].train_seconds < runs[20].train_seconds < latest.train_seconds
    first = next(iter(runs[10].sampler.generator.state_dict().values()))
    assert not torch.equal(first, next(iter(latest.sampler.generator.state_dict().values())))
    with pytest.raises(DiffRatioError, match=r"no checkpoint of step 15; it has steps \[10, 20, 30\]"):
        load_run(run_dir, step=15)
    with pytest.raises(DiffRatioError, match="export of one step"):
        load_run(export_run(run_dir, tmp_path / "m.pt"), step=10)


def test_verifier_sigma_benchmark_swaps_in_the_online_generator_and_refits_the_ratio(toy_run: Path) -> None:
    """benchmarks/verifier_sigma.py ``--online`` samples the generator the estimator was trained against, and
    ``--refit`` trains the estimator on against the EMA generator's samples (deterministically, left frozen)."""
    import importlib.util

    from diffratio import checkpoint as ckpt
    from diffratio.sampling import load_sampler

    spec = importlib.util.spec_from_file_location("verifier_sigma", RECIPES.parent / "benchmarks" / "verifier_sigma.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    run = load_sampler(toy_run)
    online = ckpt.load_state(ckpt.resolve_checkpoint(toy_run))["method"]["generator"]["model"]
    ema = {k: v.clone() for k, v in run.sampler.generator.state_dict().items()}
    assert any(not torch.equal(ema[k], online[k]) for k in online)
    bench.online_generator(run, str(toy_run))
    assert all(torch.equal(v, online[k]) for k, v in run.sampler.generator.state_dict().items())

    refits = []
    for _ in range(2):
        run = load_sampler(toy_run)
        before = [p.clone() for p in run.sampler.ratio.parameters()]
        bench.refit_ratio(run, run.ctx.dataset.mixture, steps=3)
        after = list(run.sampler.ratio.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
        assert not run.sampler.ratio.training and not any(p.requires_grad for p in after)
        refits.append([p.detach().clone() for p in after])
    assert all(torch.equal(a, b) for a, b in zip(*refits, strict=True))  # seeded: the same refit twice


def test_calibration_statistics_score_an_exact_and_a_random_estimator() -> None:
    """An estimator equal to the reference up to a constant has no error and correlation 1 (SIR ignores the
    offset); one unrelated to it has correlation ~0 and an error larger than the signal."""
    from verifier_calibration import calibration_stats

    g = torch.Generator().manual_seed(0)
    truth = 2.0 * torch.randn(5000, generator=g, dtype=torch.float64)
    exact = calibration_stats(truth + 3.0, truth)
    assert exact.signal_std == pytest.approx(2.0, rel=0.05)
    assert exact.error_rmse < 1e-9 and exact.correlation == pytest.approx(1.0, abs=1e-9)
    noise = calibration_stats(torch.randn(5000, generator=g), truth)
    assert abs(noise.correlation) < 0.05 and noise.error_over_signal > 1.0
    scaled = calibration_stats(-truth, truth)
    assert scaled.correlation == pytest.approx(-1.0, abs=1e-9) and scaled.error_over_signal == pytest.approx(2.0)


def test_calibration_reference_of_a_known_generator() -> None:
    """The kernel estimate of log q_sigma matches a Gaussian mixture's exact noised density, and ``calibrate``
    gives the exact log ratio of the wrong generator correlation ~1, with a reference noise small against
    the signal."""
    from verifier_calibration import calibrate, kde_log_density

    g = torch.Generator().manual_seed(1)
    y = P.noised(0.3).sample(500, g)
    kde = kde_log_density(y, P.sample(20000, g), 0.3)
    assert (kde - P.log_prob(y, 0.3)).abs().mean() < 0.05

    def exact(x: Tensor, sigma: Tensor, labels: Tensor | None) -> Tensor:
        return Q.log_prob(x, float(sigma[0])) - P.log_prob(x, float(sigma[0]))

    c = calibrate(lambda z, labels: Q_STD * z, exact, P, 0.3, num=1000, m=20000)
    assert c.signal_std > 1.0 and c.correlation > 0.99 and c.error_over_signal < 0.1
    assert 0 < c.kde_noise_rmse < 0.05 * c.signal_std


def test_verifier_sigma_calibration_table(toy_run: Path) -> None:
    """``--calibration`` prints one row per generator and sigma_v > 0 with the table's columns, finite values."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(RECIPES.parent / "benchmarks" / "verifier_sigma.py"), str(toy_run),
                           "--calibration", "--online", "--no-tables", "--sigmas", "0,0.1", "--num", "200",
                           "--calibration-m", "500"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "M = 500 generator samples" in proc.stdout and "### Trained run" not in proc.stdout
    header = lines.index("| run | generator | sigma_v | signal std | error RMSE | error/signal | correlation | "
                         "KDE noise RMSE |")
    rows = [line.split(" | ") for line in lines[header + 2:] if line.startswith("|")]
    assert [(r[1], r[2]) for r in rows] == [("EMA", "0.1"), ("online", "0.1")]
    assert all(math.isfinite(float(v.strip(" |"))) for r in rows for v in r[3:])


def test_verifier_sigma_temperature_table(toy_run: Path) -> None:
    """``--temperatures`` prints one row per generator and sigma_v > 0: no verifier, then SIR at each T."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(RECIPES.parent / "benchmarks" / "verifier_sigma.py"), str(toy_run),
                           "--temperatures", "1,4", "--online", "--no-tables", "--sigmas", "0,0.3", "--num", "200",
                           "--seeds", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = lines.index("| run | generator | sigma_v | no verifier (same candidates) | T = 1 | T = 4 |")
    rows = [line.split(" | ") for line in lines[header + 2:] if line.startswith("|")]
    assert [(r[1], r[2]) for r in rows] == [("EMA", "0.3"), ("online", "0.3")]
    for r in rows:  # "mean ± sd" cells, finite
        assert all(math.isfinite(float(v.strip(" |").split(" ± ")[0])) for v in r[3:])
