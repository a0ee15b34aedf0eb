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

The problem lives in estimator_bias_problem.py, training and measurement in estimator_bias_experiment.py,
summaries, tables and figures in estimator_bias_report.py; this file is the command line.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from estimator_bias_experiment import experiment
from estimator_bias_problem import N_EVAL, VARIANTS
from estimator_bias_report import (
    PARAMS_NOTE,
    headline,
    markdown_tables,
    parameter_counts,
    plot,
    read_raw,
    summarise,
    write_csv,
)


def main(argv: list[str] | None = None) -> int:
    """Run the experiment (or redraw from its raw CSV), write the CSVs, tables and figures, print the headline."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("runs") / "estimator_bias",
        help="folder for the full tables, raw numbers and figures",
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budgets", default="250,1000,5000")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--explore", action="store_true", help="compare every classifier variant (one seed, inf data)")
    ap.add_argument(
        "--variants",
        default=None,
        help="classifier variants (names in VARIANTS; default: plain,inv_sigma+snr, or all with --explore)",
    )
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
        names = sorted(
            {
                r["estimator"].removeprefix("diffratio:")
                for r in rows
                if r["estimator"].startswith("diffratio:") and r["size"] == "equal per network" and r["data"] == "inf"
            }
        )
        eq = sorted({r["estimator"].removeprefix("diffratio:") for r in rows if r["size"] == "equal total"})
        summary = summarise(rows)
        table = args.out / f"{prefix}_table.md"
        header = "".join(table.read_text().splitlines(keepends=True)[:2]) if table.exists() else ""
        header += (
            f"\nTables and figures redrawn from {prefix}_raw.csv on {time.strftime('%Y-%m-%d %H:%M')} "
            "(`--replot`).\n\n" + PARAMS_NOTE
        )
        write_csv(args.out / f"{prefix}.csv", summary)
        table.write_text(header + markdown_tables(summary, parameter_counts()))
        draw(args, prefix, summary, sorted({r["budget"] for r in rows}), names, eq)
        return 0

    if args.explore:
        names = args.variants.split(",") if args.variants else list(VARIANTS)
        rows = experiment([0], budgets, ["far", "close"], ["inf"], names, [], args.workers, N_EVAL)
        prefix = "estimator_bias_explore"
    else:
        names = (args.variants or "plain,inv_sigma+snr").split(",")
        eq = [v for v in args.equal_total.split(",") if v]
        fin = [v for v in args.finite.split(",") if v]
        rows = experiment(
            list(range(args.seeds)),
            budgets,
            ["far", "close"],
            ["inf", "finite"],
            names,
            eq,
            args.workers,
            N_EVAL,
            finite_variants=fin,
        )
        prefix = "estimator_bias"
    summary = summarise(rows)
    params = parameter_counts()
    write_csv(args.out / f"{prefix}.csv", summary)
    write_csv(args.out / f"{prefix}_raw.csv", rows)
    elapsed = time.time() - t0
    cpu = sum(
        getattr(resource.getrusage(w), k)
        for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for k in ("ru_utime", "ru_stime")
    )
    header = (
        f"<!-- written by: python benchmarks/estimator_bias.py {' '.join(argv or sys.argv[1:])} -->\n"
        f"Run on {time.strftime('%Y-%m-%d %H:%M')} ({platform.platform()}, {os.cpu_count()} CPUs, "
        f"{args.workers} worker processes of 1 thread): wall time {elapsed / 60:.1f} min, CPU time "
        f"{cpu / 60:.1f} min over all processes; load average {load0:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (the machine is shared).\n\n" + PARAMS_NOTE
    )
    (args.out / f"{prefix}_table.md").write_text(header + markdown_tables(summary, params))
    draw(args, prefix, summary, budgets, names, [] if args.explore else eq)
    if not args.explore:
        print(headline(summary, params))
    print(f"done in {elapsed / 60:.1f} min; wrote {args.out}/{prefix}.csv, {prefix}_table.md and PNGs")
    return 0


def draw(
    args: argparse.Namespace,
    prefix: str,
    summary: list[dict[str, Any]],
    budgets: list[int],
    names: list[str],
    eq: list[str],
) -> None:
    """One two-panel PNG per budget and data scenario; the largest budget on fresh data is the headline."""
    ests = [f"diffratio:{n}" for n in names] + ["vsd"]
    if not args.explore:
        ests += ["vsd:pretrained-teacher"] + [f"diffratio:{v} (equal total)" for v in eq[:1]]
    for b in budgets:
        for data in ["inf"] if args.explore else ["inf", "finite"]:
            plot(summary, args.out / f"{prefix}_{data}_{b}.png", b, data, ests)
    shutil.copyfile(args.out / f"{prefix}_inf_{max(budgets)}.png", args.out / f"{prefix}.png")


if __name__ == "__main__":
    sys.exit(main())
