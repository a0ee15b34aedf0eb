"""Reporting for ``estimator_bias.py``: per-seed rows summarised over seeds, the CSV files, the markdown
tables, the headline table of the results page and the figures.

Besides the per-sigma errors, each estimator is summarised by a pooled error weighted as a generator
step would see it (``pooled``), since that is what decides whether an estimator's bias matters in training.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any

from diffratio import count_parameters
from estimator_bias_problem import EVAL_SIGMAS, SCHEDULE, VARIANTS, classifier, equal_total_config, score_net


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
            (r["sigma"], r["rel_error"], r["cosine"], r["true_ms"])
        )
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
            out.append(
                {
                    "generator": key[0],
                    "data": key[1],
                    "size": key[2],
                    "estimator": key[3],
                    "budget": key[4],
                    "sigma": s,
                    "seeds": len(es),
                    "rel_error_mean": statistics.fmean(es),
                    "rel_error_std": _std(es),
                    "cosine_mean": statistics.fmean(cs),
                    "cosine_std": _std(cs),
                }
            )
    return out


def _std(v: list[float]) -> float:
    """Sample standard deviation; 0 for a single seed."""
    return statistics.stdev(v) if len(v) > 1 else 0.0


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` as CSV, floats to five significant digits."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: f"{v:.5g}" if isinstance(v, float) else v for k, v in r.items()})


def _pm(m: float, s: float, digits: int = 3) -> str:
    """``mean ± std`` to ``digits`` decimals."""
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_tables(summary: list[dict[str, Any]], params: dict[str, int]) -> str:
    """The averaged table (every scenario, estimator and budget), then per-sigma tables."""
    lines = [
        "### Summary (mean ± std over seeds)",
        "",
        "grid mean: plain average over the 10 sigma of the grid. pooled: relative error of the generator's "
        "gradient signal w(sigma) (est - true), pooled over sigma drawn from the training log-normal, for "
        "w = sigma^2 (VSD's weighting) and w = 1 (method.generator_weighting's default); its cosine is the "
        "mean under the training log-normal.",
        "",
        "| generator | data | budget | estimator | parameters | grid-mean rel. L2 error | grid-mean cosine "
        "| pooled error, w = sigma^2 | pooled error, w = 1 | pooled cosine |",
        "|---" * 10 + "|",
    ]
    order = {"far": 0, "close": 1, "inf": 0, "finite": 1}
    mean_rows = sorted(
        (r for r in summary if r["sigma"] == "mean"),
        key=lambda r: (
            order[r["generator"]],
            order[r["data"]],
            r["budget"],
            r["size"] != "equal per network",
            r["estimator"],
        ),
    )
    for r in mean_rows:
        est = r["estimator"] + (" (equal total)" if r["size"] == "equal total" else "")
        w2, w1 = (
            next(
                x
                for x in summary
                if x["sigma"] == p and all(x[k] == r[k] for k in ("generator", "data", "size", "estimator", "budget"))
            )
            for p in POOLED
        )
        lines.append(
            f"| {r['generator']} | {r['data']} | {r['budget']} | {est} | {params.get(est, '')} | "
            f"{_pm(r['rel_error_mean'], r['rel_error_std'])} | {_pm(r['cosine_mean'], r['cosine_std'])} | "
            f"{_pm(w2['rel_error_mean'], w2['rel_error_std'])} | "
            f"{_pm(w1['rel_error_mean'], w1['rel_error_std'])} | {_pm(w1['cosine_mean'], w1['cosine_std'])} |"
        )
    scen = sorted(
        {(r["generator"], r["data"], r["budget"]) for r in summary}, key=lambda t: (order[t[0]], order[t[1]], t[2])
    )
    for gen, data, budget in scen:
        sel = [r for r in summary if (r["generator"], r["data"], r["budget"]) == (gen, data, budget)]
        ests = sorted({(r["estimator"], r["size"]) for r in sel})
        head = [e + (" (equal total)" if s == "equal total" else "") for e, s in ests]
        lines += [
            "",
            f"### generator {gen}, data {data}, {budget} steps: rel. L2 error / cosine per sigma",
            "",
            "| sigma | " + " | ".join(head) + " |",
            "|---" * (len(head) + 1) + "|",
        ]
        for s in [*EVAL_SIGMAS, "mean", *POOLED]:
            cells = []
            for e, size in ests:
                r = next(x for x in sel if x["estimator"] == e and x["size"] == size and x["sigma"] == s)
                cells.append(
                    f"{r['rel_error_mean']:.3f}±{r['rel_error_std']:.3f} / {r['cosine_mean']:.3f}±{r['cosine_std']:.3f}"
                )
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
            name, size = (
                (est[: -len(" (equal total)")], "equal total")
                if est.endswith("(equal total)")
                else (est, "equal per network")
            )
            sel = [
                r
                for r in summary
                if r["generator"] == gen
                and r["data"] == data
                and r["budget"] == budget
                and r["estimator"] == name
                and r["size"] == size
                and isinstance(r["sigma"], float)
            ]
            if not sel:
                continue
            sel.sort(key=lambda r: r["sigma"])
            s = [r["sigma"] for r in sel]
            for ax, key in zip(axes, ("rel_error", "cosine"), strict=True):
                m = [r[f"{key}_mean"] for r in sel]
                sd = [r[f"{key}_std"] for r in sel]
                ax.plot(
                    s,
                    m,
                    style,
                    color=colors[ei],
                    marker="o",
                    ms=3,
                    label=f"{est}, q {gen}" if key == "rel_error" else None,
                )
                ax.fill_between(
                    s,
                    [a - b for a, b in zip(m, sd, strict=True)],
                    [a + b for a, b in zip(m, sd, strict=True)],
                    color=colors[ei],
                    alpha=0.15 if gi == 0 else 0.08,
                )
    for ax, title in zip(
        axes, ("relative L2 error (lower is better)", "cosine similarity (higher is better)"), strict=True
    ):
        ax.set_xscale("log")
        ax.set_xlabel("sigma")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    fig.legend(loc="center right", fontsize=7, frameon=False)
    fig.suptitle(
        f"score-difference estimates at noised generator samples: {budget} steps, data {data}, "
        "mean ± std over seeds (solid: q far, dashed: q close)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 0.76, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def headline(summary: list[dict[str, Any]], params: dict[str, int], variant: str = "inv_sigma+snr") -> str:
    """The summary table of the results page: grid-mean relative L2 error, mean ± std over seeds, of
    DiffRatio's classifier (``variant``) against VSD, per generator and budget on fresh data, then the close
    generator with a teacher trained on finite data."""

    def cell(gen: str, data: str, est: str, budget: int) -> tuple[float, float]:
        r = next(
            x
            for x in summary
            if (x["generator"], x["data"], x["estimator"], x["budget"], x["size"], x["sigma"])
            == (gen, data, est, budget, "equal per network", "mean")
        )
        return r["rel_error_mean"], r["rel_error_std"]

    ours = f"diffratio:{variant}"
    budgets = sorted({r["budget"] for r in summary})
    lines = [
        f"| generator q | training steps | DiffRatio (one network, {params[ours] / 1000:.0f}k parameters) "
        f"| VSD (two networks, {params['vsd'] / 1000:.0f}k) |",
        "|---|---|---|---|",
    ]
    for gen in ("far", "close"):
        for b in budgets:
            (m, s), (vm, vs) = cell(gen, "inf", ours, b), cell(gen, "inf", "vsd", b)
            lines.append(f"| {gen} | {b} | {m:.2f} ± {s:.2f} | {vm:.2f} ± {vs:.2f} |")
    if any(r["data"] == "finite" for r in summary):
        fin = [(cell("close", "finite", ours, b)[0], cell("close", "finite", "vsd", b)[0]) for b in budgets]
        lines.append(
            f"| close, teacher trained on finite data | {' / '.join(map(str, budgets))} | "
            f"{' / '.join(f'{a:.2f}' for a, _ in fin)} | {' / '.join(f'{v:.2f}' for _, v in fin)} |"
        )
    return "\n".join(lines)


PARAMS_NOTE = "Parameters: VSD counts its two score networks (teacher + fake); DiffRatio its one classifier.\n\n"


def parameter_counts() -> dict[str, int]:
    """Parameters of every estimator by its table label: VSD's two networks, each classifier variant at both sizes."""
    params = {"vsd": 2 * count_parameters(score_net()), "vsd:pretrained-teacher": 2 * count_parameters(score_net())}
    for v in VARIANTS:
        params[f"diffratio:{v}"] = count_parameters(classifier(VARIANTS[v]))
        params[f"diffratio:{v} (equal total)"] = count_parameters(classifier(VARIANTS[v], equal_total_config(v)))
    return params


def read_raw(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``*_raw.csv`` written by a previous run, with their numeric types back."""
    with open(path) as fh:
        return [
            {
                **r,
                "budget": int(r["budget"]),
                "seed": int(r["seed"]),
                "sigma": float(r["sigma"]),
                "rel_error": float(r["rel_error"]),
                "cosine": float(r["cosine"]),
                "true_ms": float(r["true_ms"]),
            }
            for r in csv.DictReader(fh)
        ]
