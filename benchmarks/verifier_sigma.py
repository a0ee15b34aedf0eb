"""Choose the verifier's noise level sigma_v by measurement on 2-D data.

For each sigma_v, draw ``--num`` samples with ``--candidates`` one-step candidates each, selected by a
ratio (``diffratio.verifier``; SIR and best-of-N), and measure the energy distance to held-out data,
mean +- standard deviation over seeds. Every sigma_v sees the same latents for a given seed (the
comparison across sigma_v is paired). Two settings, each printed as a markdown table:

- a trained run (``RUN``): its generator EMA and its own ratio estimator (what ``dr-sample`` uses);
- ``--calibration``: for each run (and its online generator with ``--online``) and sigma_v > 0, how far the
  ratio estimator is from the reference log ratio at the candidates it scores, against how much that log
  ratio varies (``verifier_calibration``);
- ``--temperatures 1,2,4``: SIR with its log weights divided by each temperature T (a noisy estimator's
  weights shrunk towards uniform), for each run's generators (EMA; online with ``--online``) and sigma_v > 0;
- ``--analytic``: the 8-Gaussian ring p and a deliberately wrong generator q = N(0, 1.5^2 I), scored by
  the exact ``log q_sigma - log p_sigma`` and by a ClassifierRatio of the toy2d recipe's size trained with
  ``ratio_loss`` under the recipe's log-normal sigma distribution (a ratio with a lot to correct).

    dr-train recipes/toy2d.toml --run-dir /tmp/toy2d
    python benchmarks/verifier_sigma.py /tmp/toy2d --analytic
    python benchmarks/verifier_sigma.py /tmp/toy2d --online --calibration --sigmas 0.01,0.1,0.3
    python benchmarks/verifier_sigma.py /tmp/toy2d --online --no-tables --temperatures 1,2,4 --sigmas 0.1,0.3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from diffratio.analytic import GaussianMixture, energy_distance, ring
from diffratio.errors import DiffRatioError
from diffratio.losses import ratio_loss
from diffratio.verifier import LogRatio, run_verifier, sample_with_verifier
from verifier_calibration import calibrate, calibration_header, calibration_row

#: draws ``(num, candidates, select, sigma_v, seed, temperature) -> (samples, mean ESS)``; DiffRatioError where
#: undefined
Sampler = Callable[[int, int, str, float, int, float], tuple[Tensor, float]]


def mean_sd(values: list[float], digits: int = 4) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def top_mode_share(x: Tensor, means: Tensor) -> float:
    """Share of the samples at the most populated mixture component (1/K for balanced modes)."""
    idx = torch.cdist(x.double(), means.double()).argmin(1)
    return float(torch.bincount(idx, minlength=means.shape[0]).max()) / x.shape[0]


def table(title: str, samplers: list[Sampler], held_out: Tensor, floor: float, means: Tensor,
          args: argparse.Namespace) -> None:
    """One markdown table per setting: per sigma_v, energy distance for SIR and best-of-N, SIR's effective
    sample size, and the share of samples in the most populated mode (diversity: 1/K when balanced).

    Mean and standard deviation are over every sampler (e.g. independently trained ratios) and seed."""
    n, seeds = args.candidates, [int(s) for s in args.seeds.split(",")]

    def measure(num: int, select: str, sv: float) -> tuple[list[float], list[float], list[float]]:
        ed, ess, share = [], [], []
        for f in samplers:
            for seed in seeds:
                x, e = f(args.num, num, select, sv, seed, 1.0)
                ed.append(energy_distance(x, held_out))
                ess.append(e)
                share.append(top_mode_share(x, means))
        return ed, ess, share

    plain, _, plain_share = measure(1, "sir", 0.0)
    print(f"\n### {title}\n\nN = 1 (no verifier): energy distance {mean_sd(plain)}, top-mode share "
          f"{statistics.mean(plain_share):.3f}; two-sample floor {floor:.4f}; held-out data's top-mode share "
          f"{top_mode_share(held_out, means):.3f}\n")
    print(f"| sigma_v | SIR, N = {n}: energy distance | SIR: mean ESS | SIR: top-mode share | best-of-N: energy "
          "distance | best-of-N: top-mode share |")
    print("|---|---|---|---|---|---|")
    for sv in [float(v) for v in args.sigmas.split(",")]:
        try:
            sir, ess, sir_share = measure(n, "sir", sv)
            best, _, best_share = measure(n, "best", sv)
        except DiffRatioError as exc:
            print(f"| {sv:g} | not defined: {str(exc).split(';')[0]} | | | | |")
            continue
        print(f"| {sv:g} | {mean_sd(sir)} | {statistics.mean(ess):.2f} | {statistics.mean(sir_share):.3f} | "
              f"{mean_sd(best)} | {statistics.mean(best_share):.3f} |", flush=True)


#: a temperature at which every log weight divides to 0 within float64: SIR then keeps a uniform choice
UNIFORM = 1e300


def temperature_rows(label: str, sampler: Sampler, held_out: Tensor, args: argparse.Namespace) -> list[str]:
    """Rows of the temperature table of one generator: per sigma_v > 0, the energy distance with SIR at each of
    ``--temperatures`` and without a verifier (mean +- sd over the sampling seeds). Every cell of a seed draws
    the same candidates; "no verifier" keeps a uniformly chosen one of them (T = infinity), so that each row
    is a paired comparison."""
    seeds = [int(s) for s in args.seeds.split(",")]
    sigmas = [float(v) for v in args.sigmas.split(",") if float(v) > 0]

    def cell(sv: float, t: float) -> str:
        return mean_sd([energy_distance(sampler(args.num, args.candidates, "sir", sv, seed, t)[0], held_out)
                        for seed in seeds])

    plain = cell(sigmas[0], UNIFORM) if sigmas else ""  # the uniform choice does not depend on sigma_v
    temperatures = [float(t) for t in args.temperatures.split(",")]
    return [f"| {label} | {sv:g} | {plain} | " + " | ".join(cell(sv, t) for t in temperatures) + " |" for sv in sigmas]


def temperature_header(args: argparse.Namespace) -> str:
    """The heading and column names of the temperature table."""
    temperatures = [float(t) for t in args.temperatures.split(",")]
    return (f"\n### SIR with its log weights divided by a temperature T: energy distance, N = {args.candidates}\n\n"
            "| run | generator | sigma_v | no verifier (same candidates) | "
            + " | ".join(f"T = {t:g}" for t in temperatures) + " |\n"
            "|---|---|---|---|" + "---|" * len(temperatures))


def run_setting(path: str, args: argparse.Namespace) -> list[str]:
    """Print the tables of one trained run; return its rows of the temperature table (printed at the end)."""
    from diffratio.inference import load_sampler
    from diffratio.sampling import draw

    run = load_sampler(path)
    dataset = run.ctx.dataset
    mixture = getattr(dataset, "mixture", None)
    if mixture is None:
        raise SystemExit(f"{path}: the benchmark needs a 2-D mixture data set (ring, grid)")
    ref = dataset.reference(2 * args.num)

    def sampler(num: int, n: int, select: str, sv: float, seed: int, t: float) -> tuple[Tensor, float]:
        x, diag = draw(run, num, seed=seed, candidates=n, select=select, verifier_sigma=sv,  # type: ignore[arg-type]
                       temperature=t)
        return x, float(diag["ess"].mean()) if diag else 1.0

    floor = energy_distance(ref[args.num:], ref[: args.num])
    rows: list[str] = []
    tempered = args.temperatures is not None
    t_rows = temperature_rows(f"{path} (step {run.step}) | EMA", sampler, ref[: args.num], args) if tempered else []
    if args.tables:
        table(f"Trained run {path} (step {run.step}): its generator EMA and ratio estimator", [sampler],
              ref[: args.num], floor, mixture.means, args)
    if args.calibration:
        rows += calibration_rows(run, path, "EMA", mixture, args)
    if args.online:  # the generator the estimator was trained against (the EMA lags it)
        online_generator(run, path)
        if tempered:
            t_rows += temperature_rows(f"{path} (step {run.step}) | online", sampler, ref[: args.num], args)
        if args.tables:
            table(f"Trained run {path} (step {run.step}): its online generator and ratio estimator", [sampler],
                  ref[: args.num], floor, mixture.means, args)
        if args.calibration:
            rows += calibration_rows(run, path, "online", mixture, args)
    if rows:
        print(calibration_header(args.calibration_m, args.num))
        print("\n".join(rows), flush=True)
    if args.refit:  # the EMA generator again, with an estimator trained on further against its samples
        run = load_sampler(path)
        refit_ratio(run, mixture, args.refit)
        table(f"Trained run {path} (step {run.step}): its generator EMA, the ratio estimator refitted to it for "
              f"{args.refit} steps", [sampler], ref[: args.num], floor, mixture.means, args)
    return t_rows


def calibration_rows(run: Any, path: str, generator: str, mixture: GaussianMixture,
                     args: argparse.Namespace) -> list[str]:
    """One calibration row per sigma_v > 0 for ``run``'s current generator and its ratio estimator."""
    rows, (generate, log_ratio) = [], run_verifier(run.sampler)
    for sv in [float(v) for v in args.sigmas.split(",") if float(v) > 0]:
        c = calibrate(generate, log_ratio, mixture, sv, num=args.num, m=args.calibration_m)
        rows.append(calibration_row(f"{path} (step {run.step})", generator, sv, c))
    return rows


def refit_ratio(run: Any, mixture: GaussianMixture, steps: int, seed: int = 0) -> None:
    """Train ``run``'s ratio estimator on, in place, for ``steps`` steps of its recipe's ratio loss against the
    samples it will score: the EMA generator's (class 1) against fresh data (class 0), with the recipe's
    batch, sigma distribution and ratio optimiser. The estimator then models ``log q_ema / p``."""
    cfg, ratio, generate = run.config, run.sampler.ratio, run.sampler.generator
    sched, opt = cfg["schedule"], cfg["method"]["ratio_optimizer"]
    b, g = cfg["run"]["batch_size"], torch.Generator().manual_seed(seed)
    ratio.train().requires_grad_(True)
    adam = torch.optim.Adam(ratio.parameters(), lr=opt["lr"], betas=tuple(opt["betas"]), eps=opt["eps"])
    for _ in range(steps):
        with torch.no_grad():
            x = torch.cat([generate(torch.randn(b, 2, generator=g), None), mixture.sample(b, g).float()])
        sigma = torch.exp(sched["p_mean"] + sched["p_std"] * torch.randn(2 * b, generator=g))
        sigma = sigma.clamp(sched["sigma_min"], sched["sigma_max"])
        f = ratio(x + sigma[:, None] * torch.randn(2 * b, 2, generator=g), sigma, None)
        loss = ratio_loss(f[:b], f[b:])
        adam.zero_grad()
        loss.backward()
        adam.step()
    ratio.eval().requires_grad_(False)


def online_generator(run: Any, path: str) -> None:
    """Put the online generator weights of ``run``'s checkpoint in place of the EMA that ``dr-sample`` draws
    from: the ratio estimator learned ``log q / p`` of the online generator's samples, not the EMA's."""
    from diffratio import checkpoint as ckpt

    found = ckpt.resolve_checkpoint(path)
    if found.is_file():
        raise SystemExit(f"{path}: --online needs a run directory (an export holds the EMA generator only)")
    state = ckpt.load_state(found)
    if state["step"] != run.step:
        raise SystemExit(f"{path}: the latest checkpoint changed while the benchmark ran; run it again")
    run.sampler.generator.load_state_dict(state["method"]["generator"]["model"])


def train_classifier(p: GaussianMixture, q_std: float, steps: int, seed: int) -> LogRatio:
    """ClassifierRatio (MLP encoder as in recipes/toy2d.toml) trained on q (class 1) vs p (class 0)."""
    from diffratio_builtins.backbones.mlp import MLPBackbone
    from diffratio_builtins.models import ClassifierRatio

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    backbone = MLPBackbone(MLPBackbone.Config(hidden=128, depth=3), data_shape=(2,), mode="encoder")
    ratio = ClassifierRatio(ClassifierRatio.Config(), backbone=backbone, sigma_data=p.std())
    opt = torch.optim.Adam(ratio.parameters(), lr=1e-3, betas=(0.0, 0.99))
    b = 256
    for _ in range(steps):
        x = torch.cat([q_std * torch.randn(b, 2, generator=g), p.sample(b, g).float()])
        sigma = torch.exp(-1.0 + 1.4 * torch.randn(2 * b, generator=g)).clamp(0.002, 80.0)  # the recipe's
        f = ratio(x + sigma[:, None] * torch.randn(2 * b, 2, generator=g), sigma)
        loss = ratio_loss(f[:b], f[b:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    ratio.eval()

    @torch.no_grad()
    def log_ratio(x: Tensor, sigma: Tensor, labels: Tensor | None) -> Tensor:
        return ratio(x.float(), sigma.float())

    return log_ratio


def analytic_setting(args: argparse.Namespace) -> None:
    p, q_std = ring(8, 2.0, 0.1), 1.5
    q = GaussianMixture(torch.zeros(1, 2), torch.tensor([q_std**2]))
    held_out = p.sample(args.num, torch.Generator().manual_seed(1))
    floor = energy_distance(p.sample(args.num, torch.Generator().manual_seed(2)), held_out)

    def generate(z: Tensor, labels: Tensor | None) -> Tensor:
        return q_std * z

    def exact(x: Tensor, sigma: Tensor, labels: Tensor | None) -> Tensor:
        s = float(sigma[0])
        return q.log_prob(x, s) - p.log_prob(x, s)

    def make(log_ratio: LogRatio) -> Sampler:
        def sampler(num: int, n: int, select: str, sv: float, seed: int, t: float) -> tuple[Tensor, float]:
            out = sample_with_verifier(generate, log_ratio, num=num, candidates=n, latent_shape=(2,),
                                       select=select, sigma_v=sv, rng=torch.Generator().manual_seed(seed),  # type: ignore[arg-type]
                                       max_batch=1 << 16, temperature=t)
            return out.samples, float(out.ess.mean())
        return sampler

    table("Ring p, wrong generator q = N(0, 1.5^2 I), exact log ratio", [make(exact)], held_out, floor, p.means,
          args)
    t = time.perf_counter()
    ratio_seeds = [int(s) for s in args.ratio_seeds.split(",")]
    learned = [make(train_classifier(p, q_std, args.ratio_steps, seed=10 * s)) for s in ratio_seeds]
    print(f"\n({len(ratio_seeds)} classifiers trained for {args.ratio_steps} steps each in "
          f"{time.perf_counter() - t:.0f} s)")
    table(f"Ring p, wrong generator q = N(0, 1.5^2 I), learned ClassifierRatio ({args.ratio_steps} steps; "
          f"mean ± sd over classifier seeds {args.ratio_seeds} x sampling seeds)", learned, held_out, floor,
          p.means, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="*", help="run directories of trained 2-D diffratio runs (or exports)")
    ap.add_argument("--analytic", action="store_true", help="also the wrong-generator setting (see above)")
    ap.add_argument("--sigmas", default="0,0.01,0.03,0.1,0.3,1.0", help="comma-separated sigma_v values")
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--temperatures", default=None, metavar="T,T,...",
                    help="also a table of SIR with its log weights divided by each temperature, per sigma_v > 0")
    ap.add_argument("--num", type=int, default=2000, help="samples per evaluation")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--ratio-steps", type=int, default=1000, help="training steps of the analytic classifier")
    ap.add_argument("--ratio-seeds", default="0,1,2", help="training seeds of the analytic classifiers")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--online", action="store_true", help="also each run's online generator (not its EMA)")
    ap.add_argument("--refit", type=int, default=0, metavar="STEPS",
                    help="also the EMA generator with its ratio estimator trained STEPS more steps against it")
    ap.add_argument("--calibration", action="store_true",
                    help="also the ratio estimator's error against the reference log ratio (verifier_calibration)")
    ap.add_argument("--calibration-m", type=int, default=20000, metavar="M",
                    help="generator samples of the kernel estimate of log q_sigma")
    ap.add_argument("--no-tables", dest="tables", action="store_false",
                    help="skip the energy-distance tables of the trained runs (e.g. with --calibration alone)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"# verifier sigma: N = {args.candidates}, {args.num} samples, seeds {args.seeds}; "
          f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()} ({platform.machine()}), torch {torch.__version__}, "
          f"{args.threads} thread(s). Energy distance to held-out data, mean ± sd over seeds (lower is better).")
    t_rows = [row for path in args.run for row in run_setting(path, args)]
    if t_rows:
        print(temperature_header(args))
        print("\n".join(t_rows), flush=True)
    if args.analytic:
        analytic_setting(args)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
