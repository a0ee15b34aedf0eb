"""How noisy one energy-distance draw is, for a trained 2-D run: the floor over disjoint held-out pairs,
the run's distance over sampling seeds, and both at a larger sample size.

    python benchmarks/energy_noise.py runs/toy2d [--num 2000] [--pairs 5] [--seeds 6] [--large 10000]

Prints the numbers behind the averaging of the ``energy-distance`` metric (docs/results.md section 1).
"""

from __future__ import annotations

import argparse
import sys

from diffratio.analytic import energy_distance
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
    ref = run.ctx.dataset.reference(max(2 * n * args.pairs, 2 * args.large))
    floors = [energy_distance(ref[2 * i * n:(2 * i + 1) * n], ref[(2 * i + 1) * n:(2 * i + 2) * n])
              for i in range(args.pairs)]
    eds = [energy_distance(draw(run, n, seed=s)[0], ref[:n]) for s in range(args.seeds)]
    big = args.large
    ed_big = energy_distance(draw(run, big, seed=10_000)[0], ref[:big])
    floor_big = energy_distance(ref[:big], ref[big:2 * big])
    print(f"floor at {n} points over {args.pairs} disjoint held-out pairs: "
          + ", ".join(f"{f:.5f}" for f in floors) + f" (min {min(floors):.5f}, max {max(floors):.5f})")
    print(f"the run's distance at {n} points over {args.seeds} sampling seeds: "
          + ", ".join(f"{e:.5f}" for e in eds) + f" (min {min(eds):.5f}, max {max(eds):.5f})")
    print(f"at {big} points: distance {ed_big:.5f}, floor {floor_big:.5f}, ratio {ed_big / floor_big:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
