"""How noisy one energy-distance draw is, for a trained 2-D run: the floor over disjoint held-out pairs
(with its expected value, ``analytic.energy_floor``), the run's distance over sampling seeds (each seed
against its own held-out set), and both at a larger sample size.

    python benchmarks/energy_noise.py runs/toy2d [--num 2000] [--pairs 5] [--seeds 6] [--large 10000]

Prints the numbers that decide how many draws the ``energy-distance`` metric averages.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from diffratio.analytic import energy_distance, energy_floor
from diffratio.sampling import draw, load_run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--num", type=int, default=2000, help="points per draw, as the metric's num_samples")
    ap.add_argument("--pairs", type=int, default=5, help="disjoint held-out pairs for the floor")
    ap.add_argument("--seeds", type=int, default=6, help="sampling seeds for the run's distance")
    ap.add_argument("--large", type=int, default=10000, help="one comparison at this many points")
    args = ap.parse_args(argv)
    run = load_run(args.run_dir)
    n = args.num
    ref = run.ctx.dataset.reference(max(2 * n * max(args.pairs, args.seeds), 2 * args.large))
    pairs = [(ref[2 * i * n:(2 * i + 1) * n], ref[(2 * i + 1) * n:(2 * i + 2) * n]) for i in range(args.pairs)]
    floors = [energy_distance(a, b) for a, b in pairs]
    eds = [energy_distance(draw(run, n, seed=s)[0], ref[2 * s * n:(2 * s + 1) * n]) for s in range(args.seeds)]
    big = args.large
    ed_big = energy_distance(draw(run, big, seed=10_000)[0], ref[:big])
    floor_big = energy_distance(ref[:big], ref[big:2 * big])

    def summary(xs: list[float]) -> str:
        sd = statistics.stdev(xs) if len(xs) > 1 else float("nan")
        return f"mean {statistics.fmean(xs):.5f}, sd {sd:.5f}, min {min(xs):.5f}, max {max(xs):.5f}"

    expected = energy_floor(pairs)
    print(f"floor at {n} points over {args.pairs} disjoint held-out pairs: {summary(floors)}")
    print(f"expected floor 2 E|X-X'| / n from those pairs' cross distances: {expected:.5f}")
    print(f"the run's distance at {n} points over {args.seeds} sampling seeds (each against its own held-out "
          f"set): {summary(eds)}; mean / expected floor {statistics.fmean(eds) / expected:.2f}")
    print(f"at {big} points: distance {ed_big:.5f}, one drawn floor {floor_big:.5f}, expected floor "
          f"{expected * n / big:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
