"""End-to-end 2-D comparison of DiffRatio (DiJS) and VSD from the same EDM pretraining.

For each data set (ring, grid): pretrain with recipes/toy2d-pretrain.toml (method ``edm``), then train
a one-step generator from that run directory with recipes/toy2d.toml (``diffratio``, DiJS) and with
recipes/toy2d-vsd.toml (``vsd``), the same number of generator steps, batch, learning rates, sigma
distribution and weighting. Every run is its own ``dr-train`` process with one CPU thread.

Reports the energy distance of 2000 EMA-generator samples to held-out data (the recipes' metric, with
the two-sample floor of the same size), time per generator step and peak RSS, as a CSV and a markdown
table in docs/results/. Training runs go two at a time (peak RSS is per process, from ``wait4``); the
time per step is measured afterwards in one process that alternates bursts of diffratio and vsd steps,
so that both see the same machine load (these machines are shared), as wall and CPU time.

    python benchmarks/toy2d_methods.py          # ring and grid, seeds 0-2, 3000 generator steps of 256
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"edm": "toy2d-pretrain.toml", "diffratio": "toy2d.toml", "vsd": "toy2d-vsd.toml"}
#: what is trained from each pretraining: (method, extra --set values, label). The recipes share w(sigma) = 1
#: (the diffratio recipes' choice); the sigma^2 rows show how each method fares with the other
#: usual weighting, so that the comparison is not decided by one method's tuned setting alone.
VARIANTS = {
    "diffratio": ("diffratio", [], "diffratio (dijs), w = 1"),
    "vsd": ("vsd", [], "vsd, w = 1"),
    "diffratio-w-sigma2": ("diffratio", ["method.generator_weighting=sigma2"], "diffratio (dijs), w = sigma^2"),
    "vsd-w-sigma2": ("vsd", ["method.generator_weighting=sigma2"], "vsd, w = sigma^2"),
}


def dr_train(recipe: str, run_dir: Path, sets: list[str], log: Path) -> dict[str, Any]:
    """Run ``dr-train`` in a fresh process; return its peak RSS (MiB), exit status and wall time."""
    cmd = [sys.executable, "-c", "from diffratio.cli import train; train()", str(ROOT / "recipes" / recipe),
           "--run-dir", str(run_dir), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with status {proc.returncode}; see {log}")
    return {"peak_rss_mib": usage.ru_maxrss / 1024, "process_seconds": time.perf_counter() - t0}


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def run_summary(run_dir: Path) -> dict[str, Any]:
    """Final metrics, training seconds and parameter counts of a finished run directory."""
    import torch

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = metrics[-1]
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    state = torch.load(run_dir / "checkpoints" / latest / "state.pt", map_location="cpu", weights_only=True)
    info = json.loads((run_dir / "run.json").read_text())
    return {"steps": int(state["step"]), "train_seconds": float(state["train_seconds"]),
            "energy_distance": last["energy-distance/energy_distance"], "floor": last["energy-distance/floor"],
            "ratio": last["energy-distance/ratio"], "parameters": info.get("parameters", {})}


def warmup_steps(method: str) -> int:
    """The recipe's warm-up updates of the ratio estimator / fake score: loop steps before the first
    generator step."""
    table = tomllib.loads((ROOT / "recipes" / RECIPES[method]).read_text())["method"]
    return int(table.get("warmup_ratio_steps", table.get("warmup_fake_steps", 0)))


def timing(ds: str, pre: Path, steps: int, rounds: int, tmp: Path, batch: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU milliseconds per training step of diffratio and vsd, measured in one process
    in alternating bursts of ``steps`` steps (so that both see the same machine load)."""
    import torch

    from diffratio.engine import build_run
    from diffratio.recipe import load_recipe
    from diffratio.registry import default_registry

    registry = default_registry()
    methods = {}
    for name in ("diffratio", "vsd"):
        sets = [*([] if ds == "ring" else [f"dataset.name={ds}"]), "strategy.threads=1", "loggers.console={}",
                f"method.init={json.dumps(str(pre))}", f"run.batch_size={batch}"]
        recipe = load_recipe(ROOT / "recipes" / RECIPES[name], sets, registry=registry)
        methods[name] = build_run(recipe, tmp / name, registry).method
    torch.set_num_threads(1)
    done = {}
    for name, m in methods.items():  # the warm-up (ratio / fake) steps, then a few generator steps
        done[name] = warmup_steps(name) + 5
        for i in range(done[name]):
            m.train_step(i)
    wall: dict[str, list[float]] = {n: [] for n in methods}
    cpu: dict[str, list[float]] = {n: [] for n in methods}
    for r in range(rounds):
        for name in (list(methods) if r % 2 == 0 else list(reversed(methods))):
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(done[name], done[name] + steps):
                methods[name].train_step(i)
            done[name] += steps
            wall[name].append((time.perf_counter() - t0) / steps * 1000)
            cpu[name].append((time.process_time() - c0) / steps * 1000)
    return {n: {"wall_ms": statistics.median(wall[n]), "cpu_ms": statistics.median(cpu[n])} for n in methods}


def train_one(method: str, run_dir: Path, sets: list[str]) -> dict[str, Any]:
    """Train one run (or reuse a finished one with its bench.json) and summarise it."""
    bench = run_dir / "bench.json"
    if bench.exists():
        return json.loads(bench.read_text())
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists without bench.json (an interrupted run): remove it first")
    log = run_dir.parent / f"{run_dir.name}.log"
    command = shlex.join(["dr-train", f"recipes/{RECIPES[method]}", "--run-dir", _rel(run_dir),
                          *(a for s in sets for a in ("--set", s))])
    try:
        proc = dr_train(RECIPES[method], run_dir, sets, log)
    except RuntimeError:
        last = log.read_text().strip().splitlines()[-1]
        if "training diverged" not in last:
            raise
        # a diverged run is a result, not a failure of the benchmark: keep it with no metrics
        row = {"diverged": last.split(";")[0].removeprefix("error: "), "energy_distance": math.nan,
               "floor": math.nan, "ratio": math.nan, "steps": 0, "train_seconds": math.nan, "parameters": {},
               "peak_rss_mib": math.nan, "process_seconds": math.nan, "ms_per_step": math.nan, "command": command}
        bench.write_text(json.dumps(row, indent=1))
        return row
    summ = run_summary(run_dir)
    row = {**summ, **proc, "ms_per_step": 1000 * summ["train_seconds"] / summ["steps"], "diverged": "",
           "command": command}
    bench.write_text(json.dumps(row, indent=1))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="ring,grid")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=3000, help="generator steps of diffratio and vsd")
    ap.add_argument("--batch", type=int, default=256,
                    help="batch of diffratio and vsd (the recipes use 1024)")
    ap.add_argument("--pretrain-steps", type=int, default=4000)
    ap.add_argument("--jobs", type=int, default=2, help="training runs at a time (timing is measured apart)")
    ap.add_argument("--timing-steps", type=int, default=40, help="steps per burst of the timing phase")
    ap.add_argument("--timing-rounds", type=int, default=7)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"trained from each pretraining: {list(VARIANTS)}")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "toy2d-methods")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    args = ap.parse_args(argv)
    args.runs.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    datasets = args.datasets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]

    def sets_for(ds: str, seed: int, *extra: str) -> list[str]:
        return [*([] if ds == "ring" else [f"dataset.name={ds}"]), f"run.seed={seed}", "strategy.threads=1",
                "loggers.console={}", *extra]

    def pre_dir(ds: str, seed: int) -> Path:
        return args.runs / f"{ds}-edm-s{seed}"

    rows: list[dict[str, Any]] = []

    def job(ds: str, seed: int, variant: str) -> None:
        if variant == "edm":
            method, extra = "edm", [f"run.steps={args.pretrain_steps}"]
        else:
            method, vsets, _ = VARIANTS[variant]
            extra = [f"run.steps={args.steps + warmup_steps(method)}", f"run.batch_size={args.batch}",
                     f"method.init={json.dumps(_rel(pre_dir(ds, seed)))}", *vsets]
        run_dir = pre_dir(ds, seed) if variant == "edm" else args.runs / f"{ds}-{variant}-s{seed}"
        row = {"dataset": ds, "seed": seed, "method": variant,
               **train_one(method, run_dir, sets_for(ds, seed, *extra))}
        rows.append(row)
        print(f"{ds} seed {seed} {variant}: energy distance {row['energy_distance']:.5f} "
              f"(floor {row['floor']:.5f}), peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)

    variants = args.variants.split(",")
    with ThreadPoolExecutor(args.jobs) as pool:  # pretraining first, then the methods from it
        list(pool.map(lambda t: job(*t), [(d, s, "edm") for d in datasets for s in seeds]))
        list(pool.map(lambda t: job(*t), [(d, s, v) for d in datasets for s in seeds for v in variants]))
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ds in datasets:
            cache = args.runs / f"timing-{ds}.json"  # measured once per runs folder
            if not cache.exists():
                cache.write_text(json.dumps(timing(ds, pre_dir(ds, seeds[0]), args.timing_steps,
                                                   args.timing_rounds, Path(tmp) / ds, args.batch)))
            timings[ds] = json.loads(cache.read_text())
            print(f"{ds} timing: {timings[ds]}", flush=True)
    write(args, rows, timings, time.time() - t_start)
    return 0


def write(args: argparse.Namespace, rows: list[dict[str, Any]], timings: dict[str, dict[str, dict[str, float]]],
          elapsed: float) -> None:
    order = {"edm": 0, **{v: i + 1 for i, v in enumerate(VARIANTS)}}
    rows.sort(key=lambda r: (r["dataset"], order[r["method"]], r["seed"]))
    with open(args.out / "toy2d_methods.csv", "w", newline="") as fh:
        keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "parameters"] + ["parameters"]
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({**r, "parameters": json.dumps(r["parameters"])})
    process_min = sum(r["process_seconds"] for r in rows if not math.isnan(r["process_seconds"])) / 60
    lines = [f"<!-- written by: python benchmarks/toy2d_methods.py {' '.join(sys.argv[1:])} -->",
             f"Run on {time.strftime('%Y-%m-%d %H:%M')} ({platform.platform()}, {os.cpu_count()} CPUs shared with "
             f"other jobs, one torch thread per process, {args.jobs} training runs at a time), "
             f"this invocation {elapsed / 60:.1f} min (runs already in --runs are reused, not retrained); the "
             f"training processes took {process_min:.1f} "
             f"min in all. Pretraining {args.pretrain_steps} steps; {args.steps} generator steps "
             "for every other row.", "",
             "| data | method | runs finished | energy distance (mean ± std over finished seeds) | floor | ED / floor "
             "| ms per step, interleaved (wall / CPU) | ms per step in the run (contended) | peak RSS (MiB) "
             "| parameters |", "|---" * 10 + "|"]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        for method in order:
            sel = [r for r in rows if r["dataset"] == ds and r["method"] == method]
            if not sel:
                continue

            ok = [r for r in sel if not r.get("diverged")]

            def pm(key: str, fmt: str, sel: list[dict[str, Any]] = ok) -> str:
                v = [r[key] for r in sel]
                if not v:
                    return "-"
                return f"{statistics.fmean(v):{fmt}}" + (f" ± {statistics.stdev(v):{fmt}}" if len(v) > 1 else "")

            label = "edm (Heun, 35 evaluations)" if method == "edm" else VARIANTS[method][2]
            params = ", ".join(f"{k} {v / 1e3:.0f}k" for k, v in (ok or sel)[0]["parameters"].items())
            bad = [r for r in sel if r.get("diverged")]
            runs = f"{len(ok)} of {len(sel)}" + (" (" + "; ".join(f"seed {r['seed']}: {r['diverged']}"
                                                                     for r in bad) + ")" if bad else "")
            t = timings.get(ds, {}).get(VARIANTS[method][0] if method in VARIANTS else method)
            inter = f"{t['wall_ms']:.1f} / {t['cpu_ms']:.1f}" if t else "-"
            lines.append(f"| {ds} | {label} | {runs} | {pm('energy_distance', '.5f')} | "
                         f"{pm('floor', '.5f')} | {pm('ratio', '.2f')} | {inter} | {pm('ms_per_step', '.1f')} | "
                         f"{pm('peak_rss_mib', '.0f')} | {params} |")
    lines += ["", "Commands, in the repository root:", "", "```"]
    lines += [r["command"] for r in rows]
    lines += ["```", ""]
    (args.out / "toy2d_methods_table.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'toy2d_methods.csv'} and {args.out / 'toy2d_methods_table.md'}")


if __name__ == "__main__":
    sys.exit(main())
