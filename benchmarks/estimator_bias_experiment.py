"""Training and measurement for ``estimator_bias.py``: every estimator trained on the shared streams, then
scored against the exact score difference at noised generator samples.

Training and evaluation run as independent jobs in a pool of single-threaded worker processes; the VSD
estimate needs both of its networks, so it is evaluated in a second round once all score networks exist.
"""

from __future__ import annotations

import copy
import functools
import math
import multiprocessing as mp
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffratio.losses import apply_weighting, denoising_loss, ratio_loss
from diffratio_builtins.backbones.mlp import MLPBackbone
from diffratio_builtins.methods.vsd import score_difference
from diffratio_builtins.strategies.single import SingleDevice
from estimator_bias_problem import (
    BATCH,
    EVAL_SIGMAS,
    GENERATORS,
    NET,
    OPTIMIZER,
    SIGMA_DATA,
    VARIANTS,
    P,
    classifier,
    equal_total_config,
    p_stream,
    q_stream,
    score_net,
)

# ---- training ---------------------------------------------------------------------------------------


def train_score(
    seed: int, source: Iterator[tuple[Tensor, Tensor, Tensor]], budgets: list[int]
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


def train_classifier(
    seed: int, variant: dict[str, Any], cfg: MLPBackbone.Config, gen: str, data: str, budgets: list[int]
) -> dict[int, dict[str, Tensor]]:
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


def eval_points(gen: str, seed: int, n_eval: int) -> list[tuple[float, Tensor, Tensor]]:
    """For each sigma of the grid: ``n_eval`` noised samples of q and the exact score difference there."""
    q = GENERATORS[gen]
    g = torch.Generator().manual_seed(90_000 + seed)
    out = []
    for s in EVAL_SIGMAS:
        x = q.sample(n_eval, g) + s * torch.randn(n_eval, 2, generator=g, dtype=torch.float64)
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
    """DiffRatio's estimate of the score difference: ``grad_x f(x, s)``."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(clf(x, torch.full((len(x),), s)).sum(), x)
    return grad


def evaluate_classifier(
    variant: dict[str, Any],
    cfg: MLPBackbone.Config,
    state: dict[str, Tensor],
    points: list[tuple[float, Tensor, Tensor]],
) -> list[tuple[float, float, float, float]]:
    """Errors per sigma of a trained classifier (state dict ``state``) at ``points``."""
    clf = classifier(variant, cfg)
    clf.load_state_dict(state)
    return [(s, *errors(classifier_estimate(clf, x, s), true)) for s, x, true in points]


def evaluate_vsd(
    teacher_state: dict[str, Tensor], fake_state: dict[str, Tensor], points: list[tuple[float, Tensor, Tensor]]
) -> list[tuple[float, float, float, float]]:
    """Errors per sigma of VSD's estimate from a trained teacher and fake score at ``points``."""
    teacher, fake = score_net(), score_net()
    teacher.load_state_dict(teacher_state)
    fake.load_state_dict(fake_state)
    out = []
    for s, x, true in points:
        est = score_difference(fake, teacher, x, torch.full((len(x),), s))
        out.append((s, *errors(est, true)))
    return out


# ---- jobs (run in a pool of worker processes) -------------------------------------------------------


def run_job(job: tuple, n_eval: int) -> tuple[tuple, Any]:
    """One training or evaluation job in a worker; returns the job (its key) with its snapshots or errors."""
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
        points = eval_points(gen, seed, n_eval)
        return job, {b: evaluate_classifier(variant, cfg, st, points) for b, st in snaps.items()}
    if kind == "vsd-eval":
        _, seed, gen, pairs = job  # pairs: [(key, teacher_state, fake_state)]
        points = eval_points(gen, seed, n_eval)
        return job[:3], {key: evaluate_vsd(t, f, points) for key, t, f in pairs}
    raise ValueError(kind)


def run_pool(jobs: list[tuple], workers: int, n_eval: int) -> list[tuple[tuple, Any]]:
    """``run_job`` over ``jobs``, in ``workers`` spawned processes (in this one for a single worker)."""
    if workers <= 1:
        return [run_job(j, n_eval) for j in jobs]
    with mp.get_context("spawn").Pool(workers) as pool:
        return list(pool.imap_unordered(functools.partial(run_job, n_eval=n_eval), jobs))


# ---- the experiment ---------------------------------------------------------------------------------


def experiment(
    seeds: list[int],
    budgets: list[int],
    gens: list[str],
    datas: list[str],
    variants: list[str],
    equal_total: list[str],
    workers: int,
    n_eval: int,
    finite_variants: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Train everything, evaluate at ``n_eval`` samples per sigma, return one row per (scenario, estimator, budget,
    seed, sigma)."""
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
    results = run_pool(jobs, workers, n_eval)

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
            pairs = [
                ((d, b, "same steps"), snaps[("teacher", seed, d)][b], snaps[("fake", seed, g)][b])
                for d in datas
                for b in budgets
            ]
            pairs += [
                ((d, b, f"teacher {top} steps"), snaps[("teacher", seed, d)][top], snaps[("fake", seed, g)][b])
                for d in datas
                for b in budgets
                if b != top
            ]
            vsd_jobs.append(("vsd-eval", seed, g, pairs))
    for (_, seed, gen), res in run_pool(vsd_jobs, workers, n_eval):
        for (data, b, teacher), per_sigma in res.items():
            name = "vsd" if teacher == "same steps" else "vsd:pretrained-teacher"
            rows += _rows(gen, data, name, "equal per network", b, seed, per_sigma)
    return rows


def _rows(
    gen: str,
    data: str,
    estimator: str,
    size: str,
    budget: int,
    seed: int,
    per_sigma: list[tuple[float, float, float, float]],
) -> list[dict[str, Any]]:
    """One result row per sigma of an estimator's errors."""
    return [
        {
            "generator": gen,
            "data": data,
            "estimator": estimator,
            "size": size,
            "budget": budget,
            "seed": seed,
            "sigma": s,
            "rel_error": e,
            "cosine": c,
            "true_ms": t,
        }
        for s, e, c, t in per_sigma
    ]
