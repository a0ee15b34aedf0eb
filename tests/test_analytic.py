"""Exact noised Gaussian mixtures (diffratio.analytic): densities, scores, sampling, energy distance."""

from __future__ import annotations

import math

import pytest
import torch

from diffratio.analytic import GaussianMixture, energy_distance, grid, ring


def random_spd(k: int, d: int, g: torch.Generator) -> torch.Tensor:
    """k random symmetric positive-definite d x d matrices, well away from singular."""
    a = torch.randn(k, d, d, generator=g, dtype=torch.float64)
    return a @ a.transpose(1, 2) * 0.3 + 0.05 * torch.eye(d, dtype=torch.float64)


def autograd_score(mix: GaussianMixture, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.log_prob(x, sigma).sum(), x)
    return grad


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("sigma", [0.0, 0.01, 0.3, 2.0, 40.0])
def test_score_matches_autograd_isotropic(sigma: float, gen: torch.Generator) -> None:
    mix = ring(8, 2.0, 0.1)
    x = torch.randn(200, 2, generator=gen, dtype=torch.float64) * 2.5
    torch.testing.assert_close(mix.score(x, sigma), autograd_score(mix, x, sigma), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_score_matches_autograd_full_covariance(d: int, gen: torch.Generator) -> None:
    k = 4
    means = torch.randn(k, d, generator=gen, dtype=torch.float64) * 2
    weights = torch.rand(k, generator=gen, dtype=torch.float64) + 0.1
    mix = GaussianMixture(means, random_spd(k, d, gen), weights)
    x = torch.randn(300, d, generator=gen, dtype=torch.float64) * 3
    for sigma in (0.0, 0.05, 1.0, 7.0):
        torch.testing.assert_close(mix.score(x, sigma), autograd_score(mix, x, sigma), rtol=1e-9, atol=1e-9)


def test_per_sample_sigma_equals_rowwise_evaluation(gen: torch.Generator) -> None:
    """A (N,) sigma gives row i the density and score at sigma_i; scores still match autograd."""
    mix = GaussianMixture(torch.randn(3, 2, generator=gen, dtype=torch.float64), random_spd(3, 2, gen))
    n = 64
    x = torch.randn(n, 2, generator=gen, dtype=torch.float64) * 2
    sigma = torch.exp(torch.randn(n, generator=gen, dtype=torch.float64) * 1.5 - 1)
    logp, score = mix.log_prob(x, sigma), mix.score(x, sigma)
    rows_logp = torch.stack([mix.log_prob(x[i:i + 1], float(sigma[i]))[0] for i in range(n)])
    rows_score = torch.cat([mix.score(x[i:i + 1], float(sigma[i])) for i in range(n)])
    torch.testing.assert_close(logp, rows_logp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(score, rows_score, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(score, autograd_score(mix, x, sigma), rtol=1e-9, atol=1e-9)
    # a float32 sigma tensor is accepted and promoted
    torch.testing.assert_close(mix.score(x, sigma.float()), mix.score(x, sigma.float().double()))


def test_noised_equals_convolution_parameter(gen: torch.Generator) -> None:
    mix = GaussianMixture(torch.randn(5, 2, generator=gen, dtype=torch.float64), random_spd(5, 2, gen))
    x = torch.randn(100, 2, generator=gen, dtype=torch.float64)
    for s in (0.1, 1.3):
        torch.testing.assert_close(mix.noised(s).log_prob(x), mix.log_prob(x, s))
        torch.testing.assert_close(mix.noised(s).score(x), mix.score(x, s))
        torch.testing.assert_close(mix.noised(s).noised(s).log_prob(x), mix.log_prob(x, math.sqrt(2) * s))


def test_log_prob_equals_torch_distributions(gen: torch.Generator) -> None:
    """Against torch.distributions for one component and for a two-component mixture, at sigma > 0."""
    means = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    covs = random_spd(2, 3, gen)
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)
    mix = GaussianMixture(means, covs, w)
    sigma = 0.4
    eye = torch.eye(3, dtype=torch.float64)
    comps = torch.distributions.MultivariateNormal(means, covs + sigma**2 * eye)
    ref = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(w), comps)
    x = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(mix.log_prob(x, sigma), ref.log_prob(x))
    single = GaussianMixture(means[:1], covs[:1])
    mvn = torch.distributions.MultivariateNormal(means[0], covs[0] + sigma**2 * eye)
    torch.testing.assert_close(single.log_prob(x, sigma), mvn.log_prob(x))


def test_density_integrates_to_one_in_1d() -> None:
    mix = GaussianMixture(torch.tensor([[-1.0], [2.0]]), torch.tensor([0.04, 0.25]), torch.tensor([1.0, 3.0]))
    xs = torch.linspace(-8, 10, 20001, dtype=torch.float64)[:, None]
    for s in (0.0, 0.5):
        total = torch.trapezoid(mix.log_prob(xs, s).exp(), xs[:, 0])
        assert abs(float(total) - 1) < 1e-8


def test_weights_normalised_and_isotropic_covs_expand() -> None:
    mix = GaussianMixture(torch.zeros(2, 2), torch.tensor([1.0, 4.0]), torch.tensor([2.0, 6.0]))
    torch.testing.assert_close(mix.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))
    torch.testing.assert_close(mix.covs[1], 4 * torch.eye(2, dtype=torch.float64))


def test_bad_covariance_shape_is_an_error() -> None:
    with pytest.raises(ValueError, match="covs must be"):
        GaussianMixture(torch.zeros(3, 2), torch.ones(3, 3))


def test_sample_moments_and_std(gen: torch.Generator) -> None:
    means = torch.tensor([[0.0, 0.0], [3.0, 1.0]], dtype=torch.float64)
    covs = torch.tensor([[[1.0, 0.5], [0.5, 0.5]], [[0.2, 0.0], [0.0, 0.8]]], dtype=torch.float64)
    w = torch.tensor([0.4, 0.6], dtype=torch.float64)
    mix = GaussianMixture(means, covs, w)
    x = mix.sample(200_000, gen)
    mean = (w[:, None] * means).sum(0)
    cov = (w[:, None, None] * (covs + means[:, :, None] * means[:, None, :])).sum(0) - mean[:, None] * mean[None]
    torch.testing.assert_close(x.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.03, rtol=0)
    assert mix.std() == pytest.approx(float(torch.diagonal(cov).mean().sqrt()), rel=1e-12)
    # reproducible with the same generator seed
    torch.testing.assert_close(mix.sample(10, torch.Generator().manual_seed(3)),
                               mix.sample(10, torch.Generator().manual_seed(3)))


def test_ring_and_grid_layout() -> None:
    r = ring(8, 2.0, 0.1)
    torch.testing.assert_close(r.means.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    assert r.std() == pytest.approx(math.sqrt(2.0**2 / 2 + 0.1**2))
    g = grid(5, 1.0, 0.05)
    assert g.means.shape == (25, 2)
    torch.testing.assert_close(g.means.mean(0), torch.zeros(2, dtype=torch.float64))
    assert float(g.means.abs().max()) == 2.0


def test_energy_distance(gen: torch.Generator) -> None:
    x = torch.randn(500, 2, generator=gen)
    y = torch.randn(500, 2, generator=gen)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    same = energy_distance(x, y)
    shifted = energy_distance(x, y + 1.0)
    assert 0 < same < 0.02 < shifted
    # one-dimensional closed form for point masses: 2|a - b| between delta_a and delta_b
    assert energy_distance(torch.zeros(3, 1), torch.ones(4, 1)) == pytest.approx(2.0)
