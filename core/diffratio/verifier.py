"""The learned density ratio as a verifier: inference-time parallel scaling (docs/concepts.md section 9).

Draw ``N`` one-step candidates per output in one batched generator pass, score them with one batched
ratio pass at a small noise level ``sigma_v``: ``log w = -f(x + sigma_v eps, sigma_v)``, an estimate of
``log p / q`` (the ratio estimator's logit is ``f ~ log q_sigma - log p_sigma``), then per group of ``N``
keep the best (``select="best"``, largest ``w``) or resample one with probabilities ``softmax(log w)``
(``select="sir"``, sampling-importance-resampling: with an exact ratio the output tends to ``p`` as ``N``
grows). No external reward, no extra sequential steps.

A temperature ``T`` resamples with ``log w / T`` instead. A learned estimator is noisy: where its error is as
large as the true log ratio's spread over the candidates, the best guess of the true log ratio given the
estimate is the estimate shrunk towards its mean (by the correlation times the ratio of spreads), which is
``T > 1``. ``T = 1`` is plain SIR; ``T -> infinity`` ignores the verifier; ``best`` does not depend on ``T``.

The sampler works with any two callables, so it can be embedded outside the framework::

    out = sample_with_verifier(generate, log_ratio, num=64, candidates=8, latent_shape=(2,))
    out.samples, out.log_weights, out.ess

and ``run_verifier(sampler)`` gives those callables for a trained run (``diffratio.inference.load_sampler``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import attrs
import torch
from torch import Tensor

from diffratio.errors import DiffRatioError
from diffratio.method import Sampler

#: ``x = generate(z, labels)``: one-step generator, batched.
Generate = Callable[[Tensor, Tensor | None], Tensor]
#: ``f = log_ratio(x_sigma, sigma, labels)``: logit ``~ log q_sigma(x) - log p_sigma(x)``, one per sample.
LogRatio = Callable[[Tensor, Tensor, Tensor | None], Tensor]
Select = Literal["best", "sir"]
SELECTIONS: tuple[str, ...] = ("best", "sir")

#: The verifier noise level of a run whose method sets none (``Sampler.verifier_sigma`` comes first:
#: ``verifier_sigma_of``). Small, so that the ratio stays sharp; sigma_v = 0 is not defined for a learned
#: estimator, which is conditioned on log sigma. benchmarks/verifier_sigma.py measures the choice.
DEFAULT_VERIFIER_SIGMA = 0.02


def verifier_sigma_of(sampler: Sampler) -> float:
    """The verifier sigma a trained run samples with by default: its sampler's ``verifier_sigma`` (a
    recipe's ``method.verifier_sigma``) when set, else ``DEFAULT_VERIFIER_SIGMA``."""
    return DEFAULT_VERIFIER_SIGMA if sampler.verifier_sigma is None else float(sampler.verifier_sigma)


@attrs.frozen
class Verified:
    """What ``sample_with_verifier`` returns: the selected samples and the diagnostics of the selection."""

    samples: Tensor  # (B, *data_shape): one selected candidate per output
    labels: Tensor | None  # (B,) class labels of the outputs (shared by their N candidates), or None
    log_weights: Tensor  # (B, N) float64 on the CPU: log w = -f of every candidate (zeros when N = 1)
    chosen: Tensor  # (B,) index in 0..N-1 of the selected candidate of each group
    ess: Tensor  # (B,) effective sample size of each group's weights, in [1, N]


def effective_sample_size(log_weights: Tensor) -> Tensor:
    """Kish's ``(sum w)^2 / sum w^2`` along the last dimension, computed in log space (no overflow)."""
    lw = log_weights.to(torch.float64)
    return torch.exp(2 * torch.logsumexp(lw, dim=-1) - torch.logsumexp(2 * lw, dim=-1))


def choose(log_weights: Tensor, select: Select, rng: torch.Generator) -> Tensor:
    """Index of the kept candidate per row of ``log_weights`` (B, N): argmax, or a draw from softmax."""
    if select == "best":
        return log_weights.argmax(dim=1)
    if select == "sir":
        probs = torch.softmax(log_weights.to(torch.float64), dim=1)
        return torch.multinomial(probs.to(rng.device), 1, generator=rng).squeeze(1).to(log_weights.device)
    raise DiffRatioError(f"unknown selection {select!r}; choose one of {', '.join(SELECTIONS)}")


def _randn(shape: tuple[int, ...], rng: torch.Generator, device: torch.device) -> Tensor:
    return torch.randn(shape, generator=rng, device=rng.device).to(device)


@torch.no_grad()
def score_candidates(log_ratio: LogRatio, x: Tensor, labels: Tensor | None, *, sigma_v: float,
                     rng: torch.Generator, max_batch: int = 1024) -> Tensor:
    """``log w = -f(x + sigma_v eps, sigma_v, labels)`` for every row of ``x`` (chunks of ``max_batch``).

    ``sigma_v = 0`` scores the clean samples (meaningful for an exact ratio; a learned estimator
    conditioned on log sigma is not defined there). Returns float64 on the CPU.
    """
    if sigma_v < 0 or not math.isfinite(sigma_v):
        raise DiffRatioError(f"the verifier sigma must be a finite number >= 0, got {sigma_v}")
    out = []
    for i in range(0, x.shape[0], max_batch):
        xi = x[i:i + max_batch]
        yi = None if labels is None else labels[i:i + max_batch]
        if sigma_v > 0:
            xi = xi + sigma_v * _randn(tuple(xi.shape), rng, xi.device).to(xi.dtype)
        sigma = torch.full((xi.shape[0],), float(sigma_v), device=xi.device, dtype=xi.dtype)
        f = log_ratio(xi, sigma, yi)
        out.append(-f.detach().reshape(-1).to("cpu", torch.float64))
    log_w = torch.cat(out)
    if log_w.shape[0] != x.shape[0]:
        raise DiffRatioError(f"the ratio estimator returned {log_w.shape[0]} logits for {x.shape[0]} samples; "
                             "it must return one logit per sample")
    if torch.isnan(log_w).any() or torch.isposinf(log_w).any():
        bad = int((~torch.isfinite(log_w)).sum())
        raise DiffRatioError(f"the ratio estimator gave {bad} non-finite logits at verifier sigma {sigma_v}; "
                             "a learned estimator is conditioned on log sigma, so use a verifier sigma > 0 "
                             f"(default {DEFAULT_VERIFIER_SIGMA})")
    return log_w


@torch.no_grad()
def sample_with_verifier(generate: Generate, log_ratio: LogRatio | None, *, num: int, candidates: int,
                         latent_shape: tuple[int, ...], select: Select = "sir",
                         sigma_v: float = DEFAULT_VERIFIER_SIGMA, labels: Tensor | None = None,
                         rng: torch.Generator | None = None, device: torch.device | str = "cpu",
                         max_batch: int = 1024, temperature: float = 1.0) -> Verified:
    """``num`` outputs, each the best of / resampled from ``candidates`` one-step samples scored by the ratio.

    All ``num * candidates`` latents are drawn at once (from ``rng``, a ``torch.Generator``: the same seed
    gives the same output) and pushed through ``generate`` and ``log_ratio`` in chunks of ``max_batch``.
    Candidates of output ``i`` are rows ``i * N .. i * N + N - 1`` and share its label ``labels[i]``. With
    ``candidates = 1`` this is plain sampling and the ratio is not evaluated (``log_ratio`` may be None).
    ``temperature`` divides the log weights (``Verified.log_weights`` and the ESS are of the divided ones).
    Memory grows with ``num * candidates``: call it in chunks of outputs for large ``num``.
    """
    if num < 1 or candidates < 1 or max_batch < 1:
        raise DiffRatioError(f"num, candidates and max_batch must be >= 1 (got {num}, {candidates}, {max_batch})")
    if select not in SELECTIONS:
        raise DiffRatioError(f"unknown selection {select!r}; choose one of {', '.join(SELECTIONS)}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise DiffRatioError(f"the verifier temperature must be a finite number > 0, got {temperature} "
                             "(1 = plain SIR; larger trusts the ratio estimator less)")
    if candidates > 1 and log_ratio is None:
        raise DiffRatioError("candidates > 1 needs a ratio estimator to score them")
    if labels is not None and labels.shape != (num,):
        raise DiffRatioError(f"labels must have shape ({num},), got {tuple(labels.shape)}")
    device = torch.device(device)
    if rng is None:  # derived from the global RNG, so torch.manual_seed makes it reproducible
        rng = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
    total = num * candidates
    cand_labels = None if labels is None else labels.to(device).repeat_interleave(candidates)
    z = _randn((total, *latent_shape), rng, device)
    x = torch.cat([generate(z[i:i + max_batch], None if cand_labels is None else cand_labels[i:i + max_batch])
                   for i in range(0, total, max_batch)])
    if candidates == 1:
        log_w = torch.zeros(num, 1, dtype=torch.float64)
        chosen = torch.zeros(num, dtype=torch.long)
    else:
        assert log_ratio is not None
        log_w = score_candidates(log_ratio, x, cand_labels, sigma_v=sigma_v, rng=rng,
                                 max_batch=max_batch).reshape(num, candidates) / temperature
        if torch.isneginf(log_w).all(dim=1).any():
            raise DiffRatioError("every candidate of some group has weight 0 (log w = -inf); nothing to select")
        chosen = choose(log_w, select, rng)
    rows = torch.arange(num) * candidates + chosen
    samples = x[rows.to(x.device)]
    return Verified(samples=samples, labels=None if labels is None else labels.to(device), log_weights=log_w,
                    chosen=chosen, ess=effective_sample_size(log_w))


def run_verifier(sampler: Sampler, autocast: Callable[[], AbstractContextManager[Any]] = nullcontext
                 ) -> tuple[Generate, LogRatio]:
    """``(generate, log_ratio)`` of a trained run's sampler (``diffratio.inference.load_sampler``).

    The sampler's one-step generator (``Sampler.generator``, EMA weights, what ``dr-sample`` draws from) and
    its ratio estimator (``Sampler.ratio``), both evaluated without gradients under ``autocast`` (the run
    strategy's) and returned in float32. A sampler without either raises a ``DiffRatioError``.
    """
    generator, ratio = sampler.generator, sampler.ratio
    if generator is None:
        raise DiffRatioError("this run's method has no one-step generator to draw candidates from; sampling "
                             "with a verifier needs a run of the diffratio method")
    if ratio is None:
        raise DiffRatioError("this run's method has no ratio estimator to use as a verifier; --candidates > 1 "
                             "needs a run of a method that learns one (diffratio); use --candidates 1")

    def generate(z: Tensor, labels: Tensor | None) -> Tensor:
        with torch.no_grad(), autocast():
            return generator(z, labels).float()

    def log_ratio(x: Tensor, sigma: Tensor, labels: Tensor | None) -> Tensor:
        training = ratio.training
        ratio.eval()  # no dropout while scoring
        try:
            with torch.no_grad(), autocast():
                return ratio(x, sigma, labels).float()
        finally:
            ratio.train(training)

    return generate, log_ratio


__all__ = ["DEFAULT_VERIFIER_SIGMA", "SELECTIONS", "Generate", "LogRatio", "Select", "Verified", "choose",
           "effective_sample_size", "run_verifier", "sample_with_verifier", "score_candidates", "verifier_sigma_of"]
