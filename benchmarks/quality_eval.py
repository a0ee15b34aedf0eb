"""The evaluations of ``quality.py``: which checkpoints of the finished runs are scored at which budget point,
how the jobs are shared out over one worker per GPU, and the worker itself (FID, precision and recall against
the data set's cached reference)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffratio import fid as fidlib
from diffratio.inference import load_sampler
from diffratio.sampling import draw
from diffratio.verifier import verifier_sigma_of
from quality_train import checkpoint_times, log, method_of

SCRIPT = Path(__file__).with_name("quality.py")  # the command line whose _worker stage runs one shard of jobs
FRACTIONS = {0.25: "1/4", 0.5: "1/2", 1.0: "all"}  # the budget points at which every one-step run is evaluated
SIR_N = 8  # candidates per sample when the ratio estimator resamples (SIR)
KINDS = ("budget", "teacher", "sir")  # evaluate's job kinds (--kinds)


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
            add(
                kind="sir",
                run=name,
                step=times[-1][0],
                num=args.num,
                candidates=SIR_N,
                select="sir",
                sigma=args.sigma,
                temperature=args.temperature,
                budget=budget,
            )
    if teacher := checkpoint_times(runs / "pretrain"):
        add(kind="teacher", run="pretrain", step=teacher[-1][0], num=args.num)
    return out


def results(runs: Path) -> list[dict[str, Any]]:
    """Every evaluation's result so far (``RUNS/eval/results-*.jsonl``)."""
    return [
        json.loads(line)
        for f in sorted((runs / "eval").glob("results-*.jsonl"))
        for line in f.read_text().splitlines()
        if line.strip()
    ]


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
    cmd = [
        sys.executable,
        str(SCRIPT),
        "_worker",
        "--runs",
        str(runs),
        "--weights",
        args.weights,
        "--num",
        str(args.num),
    ]
    subprocess.run(cmd, env={**os.environ, "CUDA_VISIBLE_DEVICES": gpus[0]}, check=True)
    procs = []
    for i, part in enumerate(shards(todo, len(gpus))):
        (eval_dir / f"jobs-{i}.json").write_text(json.dumps(part))
        # one worker per GPU: split the CPU threads between them (NumPy statistics, k-NN fallbacks)
        threads = str(max(1, (os.cpu_count() or 1) // len(gpus)))
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpus[i], "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads}
        procs.append(
            subprocess.Popen(
                [*cmd, "--jobs", str(eval_dir / f"jobs-{i}.json"), "--out", str(eval_dir / f"results-{i}.jsonl")],
                env=env,
            )
        )
    for i, p in enumerate(procs):
        log(f"worker {i} exited with {p.wait()}")


class Evaluator:
    """One GPU's FID network, the cached reference (with features for precision/recall) and loaded runs."""

    def __init__(self, runs: Path, weights: str, num: int) -> None:
        self.runs = runs
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.net = fidlib.InceptionFeatures(weights or None, device=self.device)
        self.dataset = load_sampler(runs / "pretrain").ctx.dataset
        self.ref = fidlib.reference_stats(
            self.dataset, self.net, num=num, cache_dir=runs / "cache", keep_features=True, batch_size=200
        )

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        run, teacher = load_sampler(self.runs / job["run"], step=job["step"]), job["run"] == "pretrain"
        kw = {k: job[k] for k in ("candidates", "select") if k in job}
        samples, diag = draw(
            run,
            job["num"],
            seed=1,
            batch=1000 if teacher else 2000,
            verifier_sigma=job.get("sigma"),
            temperature=job.get("temperature", 1.0),
            **kw,
        )
        images = self.dataset.to_image(samples)
        feats = self.net(images, batch_size=200)
        gen = fidlib.FeatureStats.from_features(feats)
        method = run.config["method"]  # generator updates: the loop steps after the other network's warm-up
        warmup = method.get("warmup_ratio_steps", method.get("warmup_fake_steps", 0))
        out = {
            **job,
            "fid": gen.frechet_distance(self.ref, device=self.device),
            "train_seconds": run.train_seconds,
            "updates": run.step if teacher else max(0, run.step - warmup),
            "evaluations": method["sample_steps"] * 2 - 1 if teacher else job.get("candidates", 1),
        }
        if self.ref.features is not None:
            n = min(len(feats), len(self.ref.features))
            out["precision"], out["recall"] = fidlib.precision_recall(
                self.ref.features[:n], feats[:n], k=3, device=self.device
            )
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
