"""The run plan and training of ``quality.py``: which one-step runs there are (method, seed, variant), and
``train``, which runs the shared pretraining, then every unfinished run for the rest of its budget, one per GPU."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

from diffratio.checkpoint import STATE_FILE, list_checkpoints

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
PRETRAIN = "fashion-mnist-pretrain.toml"
METHODS = {  # run-name prefix -> (recipe, what the table calls it)
    "dijs": ("fashion-mnist.toml", "DiffRatio, DiJS"),
    "kl": ("fashion-mnist.toml", "DiffRatio, KL"),
    "reverse-kl": ("fashion-mnist.toml", "DiffRatio, reverse KL"),
    "vsd": ("fashion-mnist-vsd.toml", "VSD, DiffRatio's sigma_init and w(sigma)"),
    "vsd-tuned": ("fashion-mnist-vsd.toml", "VSD, its own tuned sigma_init and w(sigma)"),
    "shipped": ("fashion-mnist.toml", "DiffRatio, DiJS: the recipe as shipped (its own steps and compile setting)"),
}
AS_SHIPPED = {"shipped"}  # methods trained for their recipe's run.steps with its own compile setting
STUDY_PREFIX = "study-"  # runs of --variant: DiffRatio-DiJS with other settings


def log(msg: str) -> None:
    """A progress line with the wall-clock time, flushed at once (the runs' own output goes to their logs)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def method_overrides(method: str) -> tuple[str, list[str]]:
    """(recipe, overrides) of one method; ``vsd`` takes sigma_init and w(sigma) from DiffRatio's recipe."""
    recipe = METHODS[method][0]
    if method == "vsd":
        diffratio = tomllib.loads((RECIPES / METHODS["dijs"][0]).read_text())
        return recipe, [
            f"generator.sigma_init={json.dumps(diffratio['generator']['sigma_init'])}",
            f"method.generator_weighting={json.dumps(diffratio['method']['generator_weighting'])}",
        ]
    return recipe, [] if method in ("vsd-tuned", *AS_SHIPPED) else [f"divergence.name='{method}'"]


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
    return [list(zip(gpus, todo[i : i + len(gpus)], strict=False)) for i in range(0, len(todo), len(gpus))]


def dr_train(recipe: str, run_dir: Path, sets: list[str], gpu: str) -> subprocess.Popen[bytes]:
    """Start ``dr-train`` on one GPU, appending its output to ``RUN_DIR.log``."""
    cmd = [
        sys.executable,
        "-m",
        "diffratio",
        "train",
        str(RECIPES / recipe),
        "--run-dir",
        str(run_dir),
        "--no-progress",
        "--set",
        "loggers.console={}",
    ]
    for s in sets:
        cmd += ["--set", s]
    # each run compiles into its own cache: none starts with the compiled kernels of a run before it, which
    # would spare it minutes of its budget (a resumed run finds its own)
    cache = str(run_dir.with_suffix(".inductor"))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, "PYTHONUNBUFFERED": "1", "TORCHINDUCTOR_CACHE_DIR": cache}
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
    # every one-step run alike: every checkpoint kept, and (but the runs as shipped) compiled and long enough
    # to end at its time limit; the overrides of --recipe-set, then the run's own (method, seed, variant)
    # come later and win
    common = [
        f"method.init='{pre}'",
        f"run.checkpoint_every={args.every}",
        "run.keep_checkpoints=0",
        "run.sample_every=0",
    ]
    timed = ["run.steps=100000000", "strategy.compile=true"]
    for wave in waves(left, gpus):
        procs, limits = {}, {}
        for gpu, (name, recipe, extra, seconds) in wave:
            (runs / f"{name}.sets.json").write_text(json.dumps(extra))
            alike = [*common, *([] if method_of(name) in AS_SHIPPED else timed), *data]
            procs[name], limits[name] = dr_train(recipe, runs / name, [*alike, *extra], gpu), seconds
        for name, rc in wait_all(procs, limits).items():
            if rc in (0, 128 + signal.SIGTERM):  # its run.steps reached, or stopped at its time limit
                (runs / f"{name}.done").write_text(json.dumps({"minutes": args.minutes}))
