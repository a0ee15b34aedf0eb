"""Estimator bias against ground truth: the 2-D experiment of the DiffRatio paper (its Figure 2).

Data p is a 2-D Gaussian mixture and the "generator" q a different analytic mixture, held fixed, so
only the estimators of the score difference ``grad log q_sigma - grad log p_sigma`` are compared:

(a) DiffRatio: one time-conditional classifier (``ClassifierRatio`` over an ``MLPBackbone`` encoder,
    ``losses.ratio_loss``); estimate = ``grad_x f(x, sigma)``;
(b) VSD: two EDM denoisers (``EDMDenoiser`` over an ``MLPBackbone``, ``losses.denoising_loss``), a
    teacher on p and a fake score on q; estimate = ``methods.vsd.score_difference``.

All networks see the same samples and noise, steps and optimiser; the truth is exact
(``diffratio.analytic``). Errors are measured at noised samples of q over a grid of sigma:
relative L2 error ``sqrt(mean |est - true|^2 / mean |true|^2)`` and mean cosine similarity.

Scenarios: a generator far from the data and one close to it; p sampled afresh each step ("inf") or a
finite data set that both the teacher and the classifier's real class draw from ("finite", VSD's first
source of bias); classifier as large as one score network ("equal per network") or as VSD's two
together ("equal total"); a learning curve over training budgets; three seeds.

    python benchmarks/estimator_bias.py             # the headline table; full tables and figures in --out
    python benchmarks/estimator_bias.py --explore   # classifier parameterisations, one seed
"""

from __future__ import annotations

import argparse
import copy
import csv
import functools
import math
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffratio import OptimizerConfig, count_parameters
from diffratio.analytic import GaussianMixture, ring
from diffratio.edm import EDMDenoiser
from diffratio.losses import apply_weighting, denoising_loss, ratio_loss
from diffratio_builtins.backbones.mlp import MLPBackbone
from diffratio_builtins.methods.vsd import score_difference
from diffratio_builtins.models import ClassifierRatio
from diffratio_builtins.schedules import LogNormal
from diffratio_builtins.strategies.single import SingleDevice

# ---- the problem ------------------------------------------------------------------------------------

P = ring(8, 2.0, 0.15)  # data


def _rotated_ring(angle: float, radius: float, std: float, tilt: float) -> GaussianMixture:
    a = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8) + angle
    means = radius * torch.stack([a.cos(), a.sin()], 1)
    return GaussianMixture(means, torch.full((8,), std**2), 1 + tilt * a.cos())


GENERATORS = {
    # an early generator: three blobs inside the ring, one anisotropic
    "far": GaussianMixture(torch.tensor([[-0.8, -0.4], [0.7, 0.6], [0.2, -1.1]]),
                           torch.tensor([[[0.09, 0.0], [0.0, 0.09]], [[0.16, 0.06], [0.06, 0.06]],
                                         [[0.05, 0.0], [0.0, 0.05]]]), torch.tensor([0.5, 0.3, 0.2])),
    # a nearly converged generator: the ring slightly rotated, shrunk and widened, uneven mode weights
    "close": _rotated_ring(0.06, 1.95, 0.18, 0.3),
}
SIGMA_DATA = P.std()
SCHEDULE = LogNormal(LogNormal.Config(p_mean=-1.0, p_std=1.4))  # the toy2d recipes' sigma distribution
EVAL_SIGMAS = [round(float(s), 4) for s in torch.logspace(math.log10(0.02), math.log10(5.0), 10)]
N_EVAL = 2000
BATCH = 256
N_FINITE = 200  # size of the finite data set of the "finite" scenario
OPTIMIZER = OptimizerConfig(lr=1e-3, betas=(0.9, 0.999))
NET = MLPBackbone.Config(hidden=64, depth=2, embed_dim=32)

#: classifier variants: ClassifierRatio.Config options and the weighting lambda(sigma) of the logistic loss
#: (diffratio.losses.apply_weighting with sigma_data = SIGMA_DATA; "snr" = sigma^2 / (sigma^2 + sigma_data^2))
PLAIN = {"ratio": {}, "weighting": "one"}
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": PLAIN,
    "inv_sigma": {"ratio": {"output_scale": "inv_sigma"}, "weighting": "one"},
    "inv_sigma2": {"ratio": {"output_scale": "inv_sigma2"}, "weighting": "one"},
    "inv_sigma2+snr": {"ratio": {"output_scale": "inv_sigma2"}, "weighting": "snr"},
    "energy": {"ratio": {"logit_form": "energy"}, "weighting": "one"},
    "energy+snr": {"ratio": {"logit_form": "energy"}, "weighting": "snr"},
    "energy+sigma2": {"ratio": {"logit_form": "energy"}, "weighting": "sigma2"},
    "plain+head64": {"ratio": {"head_hidden": 64}, "weighting": "one"},
    "inv_sigma+head64": {"ratio": {"output_scale": "inv_sigma", "head_hidden": 64}, "weighting": "one"},
    "energy+head64": {"ratio": {"logit_form": "energy", "head_hidden": 64}, "weighting": "one"},
    "plain+snr": {"ratio": {}, "weighting": "snr"},
    "plain+edm": {"ratio": {}, "weighting": "edm"},
    "inv_sigma+snr": {"ratio": {"output_scale": "inv_sigma"}, "weighting": "snr"},
    "inv_sigma+sigma2": {"ratio": {"output_scale": "inv_sigma"}, "weighting": "sigma2"},
}


# ---- networks ---------------------------------------------------------------------------------------


def score_net(cfg: MLPBackbone.Config = NET) -> EDMDenoiser:
    return EDMDenoiser(MLPBackbone(cfg, data_shape=(2,), mode="full"), sigma_data=SIGMA_DATA)


def classifier(variant: dict[str, Any], cfg: MLPBackbone.Config = NET) -> ClassifierRatio:
    return ClassifierRatio(ClassifierRatio.Config(**variant["ratio"]),
                           backbone=MLPBackbone(cfg, data_shape=(2,), mode="encoder"), sigma_data=SIGMA_DATA)


@functools.cache
def equal_total_config(name: str) -> MLPBackbone.Config:
    """The backbone width whose classifier (variant ``name``) has as many parameters as two score networks."""
    target = 2 * count_parameters(score_net())
    lo, hi = NET.hidden, 4 * NET.hidden  # parameters grow with the width: bisect, then pick the closer
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_parameters(classifier(VARIANTS[name], _with_hidden(mid))) < target:
            lo = mid
        else:
            hi = mid
    return _with_hidden(min((lo, hi), key=lambda h: abs(count_parameters(classifier(VARIANTS[name],
                                                                                    _with_hidden(h))) - target)))


def _with_hidden(h: int) -> MLPBackbone.Config:
    return MLPBackbone.Config(hidden=h, depth=NET.depth, embed_dim=NET.embed_dim)


# ---- sample streams: identical for every estimator of a seed ------------------------------------------


def finite_data(seed: int) -> Tensor:
    return P.sample(N_FINITE, torch.Generator().manual_seed(50_000 + seed)).float()


def stream(mix: GaussianMixture | None, data: Tensor | None, seed: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Batches ``(x, sigma, x_sigma)`` from a mixture (fresh samples) or a finite data set, from ``seed``.

    sigma is drawn from SCHEDULE's log-normal with this stream's own generator, so that the teacher,
    the fake score and the classifier of one seed see exactly the same samples, noise levels and noise.
    """
    g = torch.Generator().manual_seed(seed)
    c = SCHEDULE.config
    while True:
        if data is not None:
            x = data[torch.randint(len(data), (BATCH,), generator=g)]
        else:
            assert mix is not None
            x = mix.sample(BATCH, g).float()
        sigma = torch.exp(c.p_mean + c.p_std * torch.randn(BATCH, generator=g)).clamp(c.sigma_min, c.sigma_max)
        yield x, sigma, x + sigma[:, None] * torch.randn(BATCH, 2, generator=g)


def p_stream(seed: int, data: str) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    return stream(None, finite_data(seed), 1000 + seed) if data == "finite" else stream(P, None, 1000 + seed)


def q_stream(seed: int, gen: str) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    return stream(GENERATORS[gen], None, 2000 + seed)


# ---- training ---------------------------------------------------------------------------------------


def train_score(seed: int, source: Iterator[tuple[Tensor, Tensor, Tensor]], budgets: list[int]
                ) -> dict[int, dict[str, Tensor]]:
    """Denoising score matching; returns the state dict at each budget."""
    torch.manual_seed(seed)
    net = SingleDevice(SingleDevice.Config(device="cpu")).prepare("score", score_net(), OPTIMIZER)
    snaps = {}
    for step in range(1, max(budgets) + 1):
        x, sigma, x_sigma = next(source)
        loss = denoising_loss(net.forward(x_sigma, sigma), x, sigma, SIGMA_DATA)
        net.backward(loss)
        net.step()
        if step in budgets:
            snaps[step] = copy.deepcopy(net.model.state_dict())
    return snaps


def train_classifier(seed: int, variant: dict[str, Any], cfg: MLPBackbone.Config, gen: str, data: str,
                     budgets: list[int]) -> dict[int, dict[str, Tensor]]:
    """Time-conditional logistic regression, generated samples class 1; state dict at each budget."""
    torch.manual_seed(seed)
    clf = SingleDevice(SingleDevice.Config(device="cpu")).prepare("ratio", classifier(variant, cfg), OPTIMIZER)
    fake, real = q_stream(seed, gen), p_stream(seed, data)
    snaps = {}
    for step in range(1, max(budgets) + 1):
        _, s_q, xs_q = next(fake)
        _, s_p, xs_p = next(real)
        sigma = torch.cat([s_q, s_p])
        logits = clf.forward(torch.cat([xs_q, xs_p]), sigma)
        lam = apply_weighting(variant["weighting"], sigma, SIGMA_DATA)
        loss = ratio_loss(logits[:BATCH], logits[BATCH:], lam[:BATCH], lam[BATCH:])
        clf.backward(loss)
        clf.step()
        if step in budgets:
            snaps[step] = copy.deepcopy(clf.model.state_dict())
    return snaps


# ---- evaluation -------------------------------------------------------------------------------------


def eval_points(gen: str, seed: int) -> list[tuple[float, Tensor, Tensor]]:
    """For each sigma of the grid: noised samples of q and the exact score difference there."""
    q = GENERATORS[gen]
    g = torch.Generator().manual_seed(90_000 + seed)
    out = []
    for s in EVAL_SIGMAS:
        x = q.sample(N_EVAL, g) + s * torch.randn(N_EVAL, 2, generator=g, dtype=torch.float64)
        out.append((s, x.float(), (q.score(x, s) - P.score(x, s)).float()))
    return out


def errors(est: Tensor, true: Tensor) -> tuple[float, float, float]:
    """Relative L2 error over the samples, mean cosine similarity, and mean |true|^2 (for pooling)."""
    est, true = est.double(), true.double()
    true_ms = float((true**2).sum(1).mean())
    rel = math.sqrt(float(((est - true) ** 2).sum(1).mean()) / true_ms)
    cos = float(F.cosine_similarity(est, true, dim=1, eps=1e-30).mean())
    return rel, cos, true_ms


def classifier_estimate(clf: nn.Module, x: Tensor, s: float) -> Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(clf(x, torch.full((len(x),), s)).sum(), x)
    return grad


def evaluate_classifier(variant: dict[str, Any], cfg: MLPBackbone.Config, state: dict[str, Tensor],
                        points: list[tuple[float, Tensor, Tensor]]) -> list[tuple[float, float, float, float]]:
    clf = classifier(variant, cfg)
    clf.load_state_dict(state)
    return [(s, *errors(classifier_estimate(clf, x, s), true)) for s, x, true in points]


def evaluate_vsd(teacher_state: dict[str, Tensor], fake_state: dict[str, Tensor],
                 points: list[tuple[float, Tensor, Tensor]]) -> list[tuple[float, float, float, float]]:
    teacher, fake = score_net(), score_net()
    teacher.load_state_dict(teacher_state)
    fake.load_state_dict(fake_state)
    out = []
    for s, x, true in points:
        est = score_difference(fake, teacher, x, torch.full((len(x),), s))
        out.append((s, *errors(est, true)))
    return out


# ---- jobs (run in a pool of worker processes) -------------------------------------------------------


def run_job(job: tuple) -> tuple[tuple, Any]:
    torch.set_num_threads(1)
    kind = job[0]
    if kind == "teacher":
        _, seed, data, budgets = job
        return job, train_score(seed, p_stream(seed, data), budgets)
    if kind == "fake":
        _, seed, gen, budgets = job
        return job, train_score(seed, q_stream(seed, gen), budgets)
    if kind == "classifier":
        _, seed, name, size, gen, data, budgets = job
        variant = VARIANTS[name]
        cfg = NET if size == "equal per network" else equal_total_config(name)
        snaps = train_classifier(seed, variant, cfg, gen, data, budgets)
        points = eval_points(gen, seed)
        return job, {b: evaluate_classifier(variant, cfg, st, points) for b, st in snaps.items()}
    if kind == "vsd-eval":
        _, seed, gen, pairs = job  # pairs: [(key, teacher_state, fake_state)]
        points = eval_points(gen, seed)
        return job[:3], {key: evaluate_vsd(t, f, points) for key, t, f in pairs}
    raise ValueError(kind)


def run_pool(jobs: list[tuple], workers: int) -> list[tuple[tuple, Any]]:
    if workers <= 1:
        return [run_job(j) for j in jobs]
    with mp.get_context("spawn").Pool(workers) as pool:
        return list(pool.imap_unordered(run_job, jobs))


# ---- the experiment ---------------------------------------------------------------------------------


def experiment(seeds: list[int], budgets: list[int], gens: list[str], datas: list[str], variants: list[str],
               equal_total: list[str], workers: int, finite_variants: list[str] | None = None
               ) -> list[dict[str, Any]]:
    """Train everything, evaluate, return one row per (scenario, estimator, budget, seed, sigma)."""
    jobs: list[tuple] = []
    for seed in seeds:
        jobs += [("teacher", seed, d, budgets) for d in datas]
        jobs += [("fake", seed, g, budgets) for g in gens]
        for g in gens:
            for d in datas:
                names = variants if d == "inf" or finite_variants is None else finite_variants
                jobs += [("classifier", seed, v, "equal per network", g, d, budgets) for v in names]
                if d == "inf":
                    jobs += [("classifier", seed, v, "equal total", g, d, budgets) for v in equal_total]
    # the widest networks first, so that the pool's two workers finish together
    order = {"classifier": 0, "teacher": 1, "fake": 1}
    jobs.sort(key=lambda j: (order[j[0]], j[0] != "classifier" or j[3] != "equal total"))
    results = run_pool(jobs, workers)

    rows: list[dict[str, Any]] = []
    snaps: dict[tuple, dict[int, dict[str, Tensor]]] = {}
    for job, res in results:
        if job[0] == "classifier":
            _, seed, name, size, gen, data, _ = job
            for b, per_sigma in res.items():
                rows += _rows(gen, data, f"diffratio:{name}", size, b, seed, per_sigma)
        else:
            snaps[job[:3]] = res
    top = max(budgets)
    vsd_jobs = []
    for seed in seeds:
        for g in gens:
            pairs = [((d, b, "same steps"), snaps[("teacher", seed, d)][b], snaps[("fake", seed, g)][b])
                     for d in datas for b in budgets]
            pairs += [((d, b, f"teacher {top} steps"), snaps[("teacher", seed, d)][top],
                       snaps[("fake", seed, g)][b]) for d in datas for b in budgets if b != top]
            vsd_jobs.append(("vsd-eval", seed, g, pairs))
    for (_, seed, gen), res in run_pool(vsd_jobs, workers):
        for (data, b, teacher), per_sigma in res.items():
            name = "vsd" if teacher == "same steps" else "vsd:pretrained-teacher"
            rows += _rows(gen, data, name, "equal per network", b, seed, per_sigma)
    return rows


def _rows(gen: str, data: str, estimator: str, size: str, budget: int, seed: int,
          per_sigma: list[tuple[float, float, float, float]]) -> list[dict[str, Any]]:
    return [{"generator": gen, "data": data, "estimator": estimator, "size": size, "budget": budget, "seed": seed,
             "sigma": s, "rel_error": e, "cosine": c, "true_ms": t} for s, e, c, t in per_sigma]


# ---- reporting --------------------------------------------------------------------------------------


def training_weight(sigma: float) -> float:
    """Density of SCHEDULE's log-normal in ln(sigma): the quadrature weight of a log-spaced grid point."""
    c = SCHEDULE.config
    return math.exp(-0.5 * ((math.log(sigma) - c.p_mean) / c.p_std) ** 2)


#: pooled summaries: generator weighting w(sigma) of each ("sigma2": VSD's weighting; "one": the recipes' default)
POOLED = {"pooled w=sigma2": lambda s: s**2, "pooled w=1": lambda s: 1.0}


def pooled(per_sigma: list[tuple[float, float, float, float]], w: Any) -> tuple[float, float]:
    """Relative error of the generator's gradient signal ``w(sigma) (est - true)`` pooled over sigma drawn
    from the training distribution (grid quadrature), i.e. what a generator step sees; and the mean cosine
    under the training distribution."""
    num = den = cw = wsum = 0.0
    for s, rel, cos, tms in per_sigma:
        pi = training_weight(s)
        num += pi * w(s) ** 2 * rel**2 * tms
        den += pi * w(s) ** 2 * tms
        cw += pi * cos
        wsum += pi
    return math.sqrt(num / den), cw / wsum


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds: per sigma, averaged over the grid ("mean") and pooled with
    the training distribution and a generator weighting (``POOLED``, see ``pooled``)."""
    groups: dict[tuple, dict[int, list[tuple[float, float, float, float]]]] = {}
    for r in rows:
        key = (r["generator"], r["data"], r["size"], r["estimator"], r["budget"])
        groups.setdefault(key, {}).setdefault(r["seed"], []).append(
            (r["sigma"], r["rel_error"], r["cosine"], r["true_ms"]))
    out = []
    for key, by_seed in sorted(groups.items()):
        sig = sorted({t[0] for v in by_seed.values() for t in v})
        for s in [*sig, "mean", *POOLED]:
            es, cs = [], []
            for v in by_seed.values():
                if s in POOLED:
                    e, c = pooled(v, POOLED[s])
                    es.append(e)
                    cs.append(c)
                    continue
                pick = v if s == "mean" else [t for t in v if t[0] == s]
                es.append(statistics.fmean(t[1] for t in pick))
                cs.append(statistics.fmean(t[2] for t in pick))
            out.append({"generator": key[0], "data": key[1], "size": key[2], "estimator": key[3],
                        "budget": key[4], "sigma": s, "seeds": len(es),
                        "rel_error_mean": statistics.fmean(es), "rel_error_std": _std(es),
                        "cosine_mean": statistics.fmean(cs), "cosine_std": _std(cs)})
    return out


def _std(v: list[float]) -> float:
    return statistics.stdev(v) if len(v) > 1 else 0.0


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: f"{v:.5g}" if isinstance(v, float) else v for k, v in r.items()})


def _pm(m: float, s: float, digits: int = 3) -> str:
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_tables(summary: list[dict[str, Any]], params: dict[str, int]) -> str:
    """The averaged table (every scenario, estimator and budget), then per-sigma tables."""
    lines = ["### Summary (mean ± std over seeds)", "",
             "grid mean: plain average over the 10 sigma of the grid. pooled: relative error of the generator's "
             "gradient signal w(sigma) (est - true), pooled over sigma drawn from the training log-normal, for "
             "w = sigma^2 (VSD's weighting) and w = 1 (method.generator_weighting's default); its cosine is the "
             "mean under the training log-normal.", "",
             "| generator | data | budget | estimator | parameters | grid-mean rel. L2 error | grid-mean cosine "
             "| pooled error, w = sigma^2 | pooled error, w = 1 | pooled cosine |", "|---" * 10 + "|"]
    order = {"far": 0, "close": 1, "inf": 0, "finite": 1}
    mean_rows = sorted((r for r in summary if r["sigma"] == "mean"),
                       key=lambda r: (order[r["generator"]], order[r["data"]], r["budget"],
                                      r["size"] != "equal per network", r["estimator"]))
    for r in mean_rows:
        est = r["estimator"] + (" (equal total)" if r["size"] == "equal total" else "")
        w2, w1 = (next(x for x in summary if x["sigma"] == p and all(
            x[k] == r[k] for k in ("generator", "data", "size", "estimator", "budget"))) for p in POOLED)
        lines.append(f"| {r['generator']} | {r['data']} | {r['budget']} | {est} | {params.get(est, '')} | "
                     f"{_pm(r['rel_error_mean'], r['rel_error_std'])} | {_pm(r['cosine_mean'], r['cosine_std'])} | "
                     f"{_pm(w2['rel_error_mean'], w2['rel_error_std'])} | "
                     f"{_pm(w1['rel_error_mean'], w1['rel_error_std'])} | {_pm(w1['cosine_mean'], w1['cosine_std'])} |")
    scen = sorted({(r["generator"], r["data"], r["budget"]) for r in summary},
                  key=lambda t: (order[t[0]], order[t[1]], t[2]))
    for gen, data, budget in scen:
        sel = [r for r in summary if (r["generator"], r["data"], r["budget"]) == (gen, data, budget)]
        ests = sorted({(r["estimator"], r["size"]) for r in sel})
        head = [e + (" (equal total)" if s == "equal total" else "") for e, s in ests]
        lines += ["", f"### generator {gen}, data {data}, {budget} steps: rel. L2 error / cosine per sigma", "",
                  "| sigma | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
        for s in [*EVAL_SIGMAS, "mean", *POOLED]:
            cells = []
            for e, size in ests:
                r = next(x for x in sel if x["estimator"] == e and x["size"] == size and x["sigma"] == s)
                cells.append(f"{r['rel_error_mean']:.3f}±{r['rel_error_std']:.3f} / "
                             f"{r['cosine_mean']:.3f}±{r['cosine_std']:.3f}")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict[str, Any]], path: Path, budget: int, data: str, estimators: list[str]) -> None:
    """Two panels (relative L2 error and cosine against sigma), mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fixed = {"vsd": "black", "vsd:pretrained-teacher": "0.55"}
    colors = [fixed.get(e, cycle[i % len(cycle)]) for i, e in enumerate(estimators)]
    for gi, (gen, style) in enumerate((("far", "-"), ("close", "--"))):
        for ei, est in enumerate(estimators):
            name, size = (est[: -len(" (equal total)")], "equal total") if est.endswith("(equal total)") else (
                est, "equal per network")
            sel = [r for r in summary if r["generator"] == gen and r["data"] == data and r["budget"] == budget
                   and r["estimator"] == name and r["size"] == size and isinstance(r["sigma"], float)]
            if not sel:
                continue
            sel.sort(key=lambda r: r["sigma"])
            s = [r["sigma"] for r in sel]
            for ax, key in zip(axes, ("rel_error", "cosine"), strict=True):
                m = [r[f"{key}_mean"] for r in sel]
                sd = [r[f"{key}_std"] for r in sel]
                ax.plot(s, m, style, color=colors[ei], marker="o", ms=3,
                        label=f"{est}, q {gen}" if key == "rel_error" else None)
                ax.fill_between(s, [a - b for a, b in zip(m, sd, strict=True)],
                                [a + b for a, b in zip(m, sd, strict=True)], color=colors[ei],
                                alpha=0.15 if gi == 0 else 0.08)
    for ax, title in zip(axes, ("relative L2 error (lower is better)", "cosine similarity (higher is better)"),
                         strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("sigma")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    fig.legend(loc="center right", fontsize=7, frameon=False)
    fig.suptitle(f"score-difference estimates at noised generator samples: {budget} steps, data {data}, "
                 "mean ± std over seeds (solid: q far, dashed: q close)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.76, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs") / "estimator_bias",
                    help="folder for the full tables, raw numbers and figures")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budgets", default="250,1000,5000")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--explore", action="store_true", help="compare every classifier variant (one seed, inf data)")
    ap.add_argument("--variants", default=None,
                    help="classifier variants (names in VARIANTS; default: plain,inv_sigma+snr, or all with --explore)")
    ap.add_argument("--finite", default="inv_sigma+snr", help="variants also run on the finite data set")
    ap.add_argument("--equal-total", default="inv_sigma+snr", help="variants also run at equal total parameters")
    ap.add_argument("--replot", action="store_true", help="only redraw the PNGs from the raw CSV in --out")
    args = ap.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]
    t0, load0 = time.time(), os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        prefix = "estimator_bias_explore" if args.explore else "estimator_bias"
        rows = read_raw(args.out / f"{prefix}_raw.csv")
        names = sorted({r["estimator"].removeprefix("diffratio:") for r in rows
                        if r["estimator"].startswith("diffratio:") and r["size"] == "equal per network"
                        and r["data"] == "inf"})
        eq = sorted({r["estimator"].removeprefix("diffratio:") for r in rows if r["size"] == "equal total"})
        summary = summarise(rows)
        table = args.out / f"{prefix}_table.md"
        header = "".join(table.read_text().splitlines(keepends=True)[:2]) if table.exists() else ""
        header += (f"\nTables and figures redrawn from {prefix}_raw.csv on {time.strftime('%Y-%m-%d %H:%M')} "
                   "(`--replot`).\n\n" + PARAMS_NOTE)
        write_csv(args.out / f"{prefix}.csv", summary)
        table.write_text(header + markdown_tables(summary, parameter_counts()))
        draw(args, prefix, summary, sorted({r["budget"] for r in rows}), names, eq)
        return 0

    if args.explore:
        names = args.variants.split(",") if args.variants else list(VARIANTS)
        rows = experiment([0], budgets, ["far", "close"], ["inf"], names, [], args.workers)
        prefix = "estimator_bias_explore"
    else:
        names = (args.variants or "plain,inv_sigma+snr").split(",")
        eq = [v for v in args.equal_total.split(",") if v]
        fin = [v for v in args.finite.split(",") if v]
        rows = experiment(list(range(args.seeds)), budgets, ["far", "close"], ["inf", "finite"], names, eq,
                          args.workers, finite_variants=fin)
        prefix = "estimator_bias"
    summary = summarise(rows)
    params = parameter_counts()
    write_csv(args.out / f"{prefix}.csv", summary)
    write_csv(args.out / f"{prefix}_raw.csv", rows)
    elapsed = time.time() - t0
    cpu = sum(getattr(resource.getrusage(w), k) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for k in ("ru_utime", "ru_stime"))
    header = (f"<!-- written by: python benchmarks/estimator_bias.py {' '.join(argv or sys.argv[1:])} -->\n"
              f"Run on {time.strftime('%Y-%m-%d %H:%M')} ({platform.platform()}, {os.cpu_count()} CPUs, "
              f"{args.workers} worker processes of 1 thread): wall time {elapsed / 60:.1f} min, CPU time "
              f"{cpu / 60:.1f} min over all processes; load average {load0:.1f} at the start, "
              f"{os.getloadavg()[0]:.1f} at the end (the machine is shared).\n\n" + PARAMS_NOTE)
    (args.out / f"{prefix}_table.md").write_text(header + markdown_tables(summary, params))
    draw(args, prefix, summary, budgets, names, [] if args.explore else eq)
    if not args.explore:
        print(headline(summary, params))
    print(f"done in {elapsed / 60:.1f} min; wrote {args.out}/{prefix}.csv, {prefix}_table.md and PNGs")
    return 0


def headline(summary: list[dict[str, Any]], params: dict[str, int], variant: str = "inv_sigma+snr") -> str:
    """The summary table of the results page: grid-mean relative L2 error, mean ± std over seeds, of
    DiffRatio's classifier (``variant``) against VSD, per generator and budget on fresh data, then the close
    generator with a teacher trained on finite data."""
    def cell(gen: str, data: str, est: str, budget: int) -> tuple[float, float]:
        r = next(x for x in summary if (x["generator"], x["data"], x["estimator"], x["budget"], x["size"], x["sigma"])
                 == (gen, data, est, budget, "equal per network", "mean"))
        return r["rel_error_mean"], r["rel_error_std"]
    ours = f"diffratio:{variant}"
    budgets = sorted({r["budget"] for r in summary})
    lines = [f"| generator q | training steps | DiffRatio (one network, {params[ours] / 1000:.0f}k parameters) "
             f"| VSD (two networks, {params['vsd'] / 1000:.0f}k) |", "|---|---|---|---|"]
    for gen in ("far", "close"):
        for b in budgets:
            (m, s), (vm, vs) = cell(gen, "inf", ours, b), cell(gen, "inf", "vsd", b)
            lines.append(f"| {gen} | {b} | {m:.2f} ± {s:.2f} | {vm:.2f} ± {vs:.2f} |")
    if any(r["data"] == "finite" for r in summary):
        fin = [(cell("close", "finite", ours, b)[0], cell("close", "finite", "vsd", b)[0]) for b in budgets]
        lines.append(f"| close, teacher trained on finite data | {' / '.join(map(str, budgets))} | "
                     f"{' / '.join(f'{a:.2f}' for a, _ in fin)} | {' / '.join(f'{v:.2f}' for _, v in fin)} |")
    return "\n".join(lines)


PARAMS_NOTE = "Parameters: VSD counts its two score networks (teacher + fake); DiffRatio its one classifier.\n\n"


def parameter_counts() -> dict[str, int]:
    params = {"vsd": 2 * count_parameters(score_net()), "vsd:pretrained-teacher": 2 * count_parameters(score_net())}
    for v in VARIANTS:
        params[f"diffratio:{v}"] = count_parameters(classifier(VARIANTS[v]))
        params[f"diffratio:{v} (equal total)"] = count_parameters(classifier(VARIANTS[v], equal_total_config(v)))
    return params


def draw(args: argparse.Namespace, prefix: str, summary: list[dict[str, Any]], budgets: list[int],
         names: list[str], eq: list[str]) -> None:
    """One two-panel PNG per budget and data scenario; the largest budget on fresh data is the headline."""
    ests = [f"diffratio:{n}" for n in names] + ["vsd"]
    if not args.explore:
        ests += ["vsd:pretrained-teacher"] + [f"diffratio:{v} (equal total)" for v in eq[:1]]
    for b in budgets:
        for data in (["inf"] if args.explore else ["inf", "finite"]):
            plot(summary, args.out / f"{prefix}_{data}_{b}.png", b, data, ests)
    shutil.copyfile(args.out / f"{prefix}_inf_{max(budgets)}.png", args.out / f"{prefix}.png")


def read_raw(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``*_raw.csv`` written by a previous run, with their numeric types back."""
    with open(path) as fh:
        return [{**r, "budget": int(r["budget"]), "seed": int(r["seed"]), "sigma": float(r["sigma"]),
                 "rel_error": float(r["rel_error"]), "cosine": float(r["cosine"]), "true_ms": float(r["true_ms"])}
                for r in csv.DictReader(fh)]


if __name__ == "__main__":
    sys.exit(main())
