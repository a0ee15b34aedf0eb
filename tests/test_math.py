"""The mathematics of docs/concepts.md against closed forms on Gaussians.

For every built-in divergence, the gradient of the generator surrogate loss (computed with the exact log
ratio, through ``diffratio.losses.generator_loss`` and the divergence's ``weight``) must equal the
finite-difference gradient of ``D_F(p_sigma || q_sigma) = E_q[F(p/q)]`` (computed with the divergence's
own ``F``), and the logistic ratio loss must be minimised by the log density ratio. Expectations are
Gauss-Hermite quadratures in float64, so the comparisons are tight.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffratio.losses import generator_loss, ratio_loss
from diffratio.registry import default_registry


@pytest.fixture(autouse=True)
def float64_default():
    """Closed-form comparisons run in float64; the default is restored for the other test files."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def gh_normal(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights for E[g(u)], u ~ N(0, 1)."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return torch.tensor(x), torch.tensor(w / math.sqrt(2 * math.pi))


def gauss_logpdf(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, cov) for x (N, d)."""
    d = x.shape[-1]
    diff = x - mean
    sol = torch.linalg.solve(cov, diff.T).T
    return -0.5 * ((diff * sol).sum(-1) + torch.logdet(cov) + d * math.log(2 * math.pi))


def divergences() -> list[tuple[str, object]]:
    reg = default_registry()
    out = []
    for name in reg.names("divergence"):
        cls = reg.get("divergence", name).cls
        if name == "f-divergence":
            for fn in ("reverse-kl", "kl", "js", "hellinger", "pearson"):
                out.append((f"f-divergence:{fn}", cls(cls.Config(function=fn, max_log_weight=60.0))))
        elif name == "kl":
            out.append((name, cls(cls.Config(max_log_weight=60.0))))
        else:
            out.append((name, cls()))
    return out


DIVERGENCES = divergences()
SIGMAS = [0.0, 0.3, 1.5]


def test_every_builtin_divergence_is_covered() -> None:
    names = {n.split(":")[0] for n, _ in DIVERGENCES}
    assert {"reverse-kl", "kl", "dijs", "f-divergence"} <= names


# ---------------------------------------------------------------------------------------------
# 1-D: p = N(m_p, s_p^2); generator x = mu + s z, theta = (mu, log s)
# ---------------------------------------------------------------------------------------------

P1 = (0.3, 0.8)  # mean, std of the data
# generator wider than data: every F's expectation is finite
THETA1 = torch.tensor([-0.4, math.log(1.1)], dtype=torch.float64)


def divergence_1d(theta: torch.Tensor, sigma: float, div: object) -> torch.Tensor:
    """D_F(p_sigma || q_sigma) = E_{q_sigma}[F(p_sigma / q_sigma)] by quadrature."""
    mu, s = theta[0], theta[1].exp()
    sq = torch.sqrt(s**2 + sigma**2)
    sp = math.sqrt(P1[1] ** 2 + sigma**2)
    u, w = gh_normal(120)
    x = (mu + sq * u)[:, None]
    log_r = gauss_logpdf(x, torch.tensor([P1[0]]), torch.tensor([[sp**2]])) - gauss_logpdf(
        x, mu.reshape(1), (sq**2).reshape(1, 1))
    return (w * div.F(log_r.exp())).sum()


def surrogate_grad_1d(theta: torch.Tensor, sigma: float, div: object) -> torch.Tensor:
    """Gradient of E[sg(h(f)) f(mu + s z + sigma eps)] with f the exact log ratio at fixed theta."""
    theta = theta.clone().requires_grad_(True)
    mu, s = theta[0], theta[1].exp()
    sq_fixed = torch.sqrt(s.detach() ** 2 + sigma**2)
    sp = math.sqrt(P1[1] ** 2 + sigma**2)
    u, wu = gh_normal(60)
    z, e = torch.meshgrid(u, u, indexing="ij")
    wq = (wu[:, None] * wu[None, :]).flatten()
    x = (mu + s * z + sigma * e).reshape(-1, 1)
    f = gauss_logpdf(x, mu.detach().reshape(1), (sq_fixed**2).reshape(1, 1)) - gauss_logpdf(
        x, torch.tensor([P1[0]]), torch.tensor([[sp**2]]))
    loss = generator_loss(f, div, wq * len(wq))  # mean of weight * h * f = the quadrature sum
    (g,) = torch.autograd.grad(loss, theta)
    return g


def finite_difference(fn, theta: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    g = torch.zeros_like(theta)
    for i in range(len(theta)):
        d = torch.zeros_like(theta)
        d[i] = h
        g[i] = (fn(theta + d) - fn(theta - d)) / (2 * h)
    return g


@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("name,div", DIVERGENCES, ids=[n for n, _ in DIVERGENCES])
def test_generator_gradient_matches_divergence_gradient_1d(name: str, div: object, sigma: float) -> None:
    analytic = finite_difference(lambda t: divergence_1d(t, sigma, div), THETA1)
    surrogate = surrogate_grad_1d(THETA1, sigma, div)
    assert analytic.abs().max() > 1e-3, "degenerate test point: the divergence does not depend on theta"
    torch.testing.assert_close(surrogate, analytic, rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# 2-D: p = N(m_p, S_p) with correlation; generator x = mu + A z, A lower triangular
# ---------------------------------------------------------------------------------------------

MP2 = torch.tensor([0.2, -0.1], dtype=torch.float64)
SP2 = torch.tensor([[0.5, 0.15], [0.15, 0.4]], dtype=torch.float64)
# theta = (mu1, mu2, log a11, a21, log a22)
THETA2 = torch.tensor([-0.3, 0.25, math.log(0.95), 0.1, math.log(0.9)], dtype=torch.float64)


def affine(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu = theta[:2]
    A = torch.stack([torch.stack([theta[2].exp(), torch.zeros(())]), torch.stack([theta[3], theta[4].exp()])])
    return mu, A


def divergence_2d(theta: torch.Tensor, sigma: float, div: object) -> torch.Tensor:
    mu, A = affine(theta)
    cq = A @ A.T + sigma**2 * torch.eye(2)
    cp = SP2 + sigma**2 * torch.eye(2)
    u, w = gh_normal(50)
    U = torch.cartesian_prod(u, u)
    W = torch.cartesian_prod(w, w).prod(1)
    x = mu + U @ torch.linalg.cholesky(cq).T
    log_r = gauss_logpdf(x, MP2, cp) - gauss_logpdf(x, mu, cq)
    return (W * div.F(log_r.exp())).sum()


def surrogate_grad_2d(theta: torch.Tensor, sigma: float, div: object) -> torch.Tensor:
    theta = theta.clone().requires_grad_(True)
    mu, A = affine(theta)
    cq = (A @ A.T).detach() + sigma**2 * torch.eye(2)
    cp = SP2 + sigma**2 * torch.eye(2)
    u, w = gh_normal(30)
    ue, we = gh_normal(12 if sigma > 0 else 1)  # the noise dimensions vanish at sigma = 0
    nodes = torch.cartesian_prod(u, u, ue, ue)  # (z1, z2, e1, e2)
    W = torch.cartesian_prod(w, w, we, we).prod(1)
    x = mu + nodes[:, :2] @ A.T + sigma * nodes[:, 2:]
    f = gauss_logpdf(x, mu.detach(), cq) - gauss_logpdf(x, MP2, cp)
    (g,) = torch.autograd.grad(generator_loss(f, div, W * len(W)), theta)
    return g


@pytest.mark.parametrize("sigma", [0.0, 0.7])
@pytest.mark.parametrize("name,div", DIVERGENCES, ids=[n for n, _ in DIVERGENCES])
def test_generator_gradient_matches_divergence_gradient_2d(name: str, div: object, sigma: float) -> None:
    analytic = finite_difference(lambda t: divergence_2d(t, sigma, div), THETA2)
    surrogate = surrogate_grad_2d(THETA2, sigma, div)
    torch.testing.assert_close(surrogate, analytic, rtol=2e-4, atol=2e-6)


# ---------------------------------------------------------------------------------------------
# The logistic loss is minimised by the log density ratio
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_logistic_loss_minimiser_is_log_ratio(sigma: float) -> None:
    """Fit f(x) = a x^2 + b x + c (the exact family for two Gaussians) by minimising ratio_loss."""
    mq, sq = -0.5, math.sqrt(1.3**2 + sigma**2)
    mp, sp = 0.4, math.sqrt(0.7**2 + sigma**2)
    u, w = gh_normal(80)
    xq, xp = mq + sq * u, mp + sp * u
    coef = torch.zeros(3, requires_grad=True)

    def f(x: torch.Tensor) -> torch.Tensor:
        return coef[0] * x**2 + coef[1] * x + coef[2]

    opt = torch.optim.LBFGS([coef], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ratio_loss(f(xq), f(xp), w * len(w), w * len(w))
        loss.backward()
        return loss

    opt.step(closure)
    # exact: log N(x; mq, sq^2) - log N(x; mp, sp^2)
    a = -0.5 / sq**2 + 0.5 / sp**2
    b = mq / sq**2 - mp / sp**2
    c = -0.5 * mq**2 / sq**2 + 0.5 * mp**2 / sp**2 - math.log(sq) + math.log(sp)
    torch.testing.assert_close(coef.detach(), torch.tensor([a, b, c]), rtol=1e-5, atol=1e-6)


def test_weights_match_closed_forms() -> None:
    """h(f) of the three named divergences, at a few logits, against docs/concepts.md's table."""
    reg = default_registry()
    f = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0])
    torch.testing.assert_close(reg.get("divergence", "reverse-kl").cls().weight(f), torch.ones(5))
    kl = reg.get("divergence", "kl").cls
    torch.testing.assert_close(kl(kl.Config(max_log_weight=10.0)).weight(f), torch.exp(-f))
    torch.testing.assert_close(reg.get("divergence", "dijs").cls().weight(f), 0.5 * torch.sigmoid(-f))
    fd = reg.get("divergence", "f-divergence").cls
    torch.testing.assert_close(fd(fd.Config(function="hellinger")).weight(f), 0.5 * torch.exp(-f / 2))
    # the forward-KL clamp caps the weight of very "real-looking" samples
    assert float(kl().weight(torch.tensor([-100.0]))) == pytest.approx(math.exp(5.0))


def test_ema_warmups_reach_the_configured_decay_when_they_say() -> None:
    """ramp: (1+t)/(10+t), 0.999 from step 8990 on; average: the plain mean of all weights until the
    window is 1/(1-decay) steps (step 999 at 0.999); none: the decay at once. The average warm-up really
    averages: after n updates from w_0 the EMA equals the mean of w_1..w_n (w_0 gets weight 0)."""
    from diffratio_builtins.methods.common import ema_decay_at, make_ema, update_ema

    assert ema_decay_at(0.999, 8989, "ramp") < 0.999 == ema_decay_at(0.999, 8991, "ramp")
    assert ema_decay_at(0.999, 998, "average") < 0.999 == ema_decay_at(0.999, 1000, "average")
    assert ema_decay_at(0.999, 0, "none") == 0.999
    net = torch.nn.Linear(1, 1, bias=False)
    ema = make_ema(net)
    seen = []
    for t in range(5):
        with torch.no_grad():
            net.weight.fill_(float(t + 1) ** 2)
        seen.append(float(t + 1) ** 2)
        update_ema(ema, net, 0.999, t, "average")
    assert float(ema.weight) == pytest.approx(sum(seen) / len(seen))


def test_energy_floor_is_the_expected_two_sample_statistic() -> None:
    """For two independent n-point samples of one distribution the V-statistic averages 2 E|X-X'| / n; for a
    2-D standard normal E|X-X'| = sqrt(pi). ``energy_floor`` matches that closed form, and so does the mean
    of many drawn two-sample statistics (within four standard errors)."""
    from diffratio.analytic import energy_distance, energy_floor

    n = 50
    gen = torch.Generator().manual_seed(3)
    pairs = [(torch.randn(n, 2, generator=gen), torch.randn(n, 2, generator=gen)) for _ in range(800)]
    exact = 2 * math.sqrt(math.pi) / n
    assert energy_floor(pairs) == pytest.approx(exact, rel=0.01)
    drawn = torch.tensor([energy_distance(a, b) for a, b in pairs])
    assert abs(float(drawn.mean()) - exact) < 4 * float(drawn.std()) / math.sqrt(len(pairs))
    assert energy_floor(pairs[:1]) == pytest.approx(exact, rel=0.1)  # one pair's cross distances already close


def test_energy_distance_metric_averages_disjoint_draws_and_uses_fewer_when_data_are_short() -> None:
    """The metric's distance is the mean over ``repeats`` generated sets against disjoint held-out sets, its
    floor the expected two-sample statistic 2 E|X-X'| / n from those pairs' cross distances (the pairs' own
    statistics reported beside it); a held-out set too small for all repeats gives fewer, too small for one fails."""
    from types import SimpleNamespace

    from diffratio.analytic import energy_distance
    from diffratio_builtins.metrics.energy import EnergyDistance

    gen = torch.Generator().manual_seed(0)
    held = torch.randn(1000, 2, generator=gen)
    shifted = torch.randn(5, 100, 2, generator=gen) + 0.5
    draws = iter(shifted)

    def ctx(points: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(dataset=SimpleNamespace(reference=lambda k: points[:k]), sample=lambda n: next(draws))

    out = EnergyDistance(EnergyDistance.Config(num_samples=100, repeats=3)).compute(ctx(held))
    pairs = [(held[200 * i:200 * i + 100], held[200 * i + 100:200 * i + 200]) for i in range(3)]
    floors = [energy_distance(a, b) for a, b in pairs]
    cross = sum(float(torch.cdist(a.double(), b.double()).mean()) for a, b in pairs) / 3
    assert out["repeats"] == 3
    assert out["energy_distance"] == pytest.approx(sum(energy_distance(shifted[i], pairs[i][0]) for i in range(3)) / 3)
    assert out["floor"] == pytest.approx(2 * cross / 100)
    assert out["ratio"] == pytest.approx(out["energy_distance"] / out["floor"])
    assert out["floor_sampled"] == pytest.approx(sum(floors) / 3)
    assert (out["floor_min"], out["floor_max"]) == (pytest.approx(min(floors)), pytest.approx(max(floors)))
    assert out["energy_distance"] > 2 * out["floor"]  # the generated sets are shifted by 0.5

    short = EnergyDistance(EnergyDistance.Config(num_samples=100, repeats=5)).compute(ctx(held[:450]))
    assert short["repeats"] == 2
    with pytest.raises(ValueError, match="needs 200 reference points"):
        EnergyDistance(EnergyDistance.Config(num_samples=100, repeats=5)).compute(ctx(held[:150]))
