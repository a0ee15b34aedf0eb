"""benchmarks/quality.py: its run plan, how it trains and resumes, which checkpoints it evaluates at which
budget point, how it shares the evaluations out, and the report it writes (no training, no FID network)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import torch

from conftest import ROOT

BENCHMARKS = ROOT / "benchmarks"


def load_quality() -> ModuleType:
    """quality.py loaded by its path (its sibling modules import through pytest's ``pythonpath``)."""
    spec = importlib.util.spec_from_file_location("quality", BENCHMARKS / "quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def options(*argv: str) -> argparse.Namespace:
    """The script's options as its command line gives them."""
    return load_quality().parser().parse_args(list(argv))


def checkpoint(run_dir: Path, step: int, train_seconds: float) -> None:
    """A committed checkpoint folder holding a ``state.pt`` with its step and training time."""
    folder = run_dir / "checkpoints" / f"{step:09d}"
    folder.mkdir(parents=True)
    torch.save({"step": step, "train_seconds": train_seconds, "method": {"w": torch.zeros(1000)}}, folder / "state.pt")
    (folder / "meta.json").write_text("{}")


def finished(runs: Path, name: str, minutes: float, times: list[tuple[int, float]]) -> None:
    for step, seconds in times:
        checkpoint(runs / name, step, seconds)
    (runs / f"{name}.done").write_text(json.dumps({"minutes": minutes}))


def test_plan_names_every_method_at_every_seed() -> None:
    q = load_quality()
    plan = q.plan(options("--seeds", "0,1"))
    assert [name for name, *_ in plan] == [
        f"{m}-s{s}" for s in (0, 1) for m in ("dijs", "kl", "reverse-kl", "vsd", "vsd-tuned", "shipped")
    ]
    by_name = {name: (recipe, sets) for name, recipe, sets in plan}
    assert by_name["reverse-kl-s1"] == ("fashion-mnist.toml", ["run.seed=1", "divergence.name='reverse-kl'"])
    assert by_name["vsd-tuned-s0"] == ("fashion-mnist-vsd.toml", ["run.seed=0"])  # as shipped
    assert by_name["shipped-s1"] == ("fashion-mnist.toml", ["run.seed=1"])
    # like for like: the DiffRatio recipe's sigma_init and generator weighting, as that recipe says today
    diffratio = tomllib.loads((ROOT / "recipes" / "fashion-mnist.toml").read_text())
    recipe, sets = by_name["vsd-s0"]
    assert recipe == "fashion-mnist-vsd.toml" and sets[0] == "run.seed=0"
    got = {k: tomllib.loads(f"v = {v}")["v"] for k, v in (s.split("=", 1) for s in sets[1:])}
    assert got == {
        "generator.sigma_init": diffratio["generator"]["sigma_init"],
        "method.generator_weighting": diffratio["method"]["generator_weighting"],
    }

    # a subset, and the study: DiffRatio-DiJS with its overrides last, at every seed
    plan = q.plan(options("--methods", "kl", "--seeds", "3", "--variant", "lr: method.generator_optimizer.lr=1e-4"))
    assert plan == [
        ("kl-s3", "fashion-mnist.toml", ["run.seed=3", "divergence.name='kl'"]),
        ("study-lr-s3", "fashion-mnist.toml", ["run.seed=3", "method.generator_optimizer.lr=1e-4"]),
    ]
    assert q.plan(options("--methods", "none")) == []
    with pytest.raises(SystemExit, match="unknown"):
        q.plan(options("--methods", "diffratio-dijs"))
    with pytest.raises(SystemExit, match="LABEL: KEY=VALUE"):
        q.plan(options("--methods", "none", "--variant", "no-colon"))


def test_each_run_compiles_into_its_own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No run starts with the compiled kernels of the run before it (which would spare it part of its budget)."""
    import subprocess

    load_quality()
    import quality_train

    seen: list[dict[str, str]] = []

    class FakePopen:
        def __init__(self, cmd: list[str], env: dict[str, str], **kw: object) -> None:
            seen.append(env)

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    for name in ("dijs-s0", "vsd-s0"):
        quality_train.dr_train("fashion-mnist.toml", tmp_path / name, [], "3")
    assert [e["TORCHINDUCTOR_CACHE_DIR"] for e in seen] == [str(tmp_path / "dijs-s0.inductor"),
                                                            str(tmp_path / "vsd-s0.inductor")]
    assert all(e["CUDA_VISIBLE_DEVICES"] == "3" for e in seen)


def test_vsd_like_for_like_reads_the_diffratio_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The like-for-like VSD run follows whatever the DiffRatio recipe says, not values written in the script."""
    q = load_quality()
    text = (ROOT / "recipes" / "fashion-mnist.toml").read_text()
    text = re.sub(r"(?m)^sigma_init = .*$", "sigma_init = 0.7", text)
    text = re.sub(r"(?m)^generator_weighting = .*$", 'generator_weighting = "sigma2"', text)
    (tmp_path / "fashion-mnist.toml").write_text(text)
    monkeypatch.setattr("quality_train.RECIPES", tmp_path)  # the module that reads it
    assert q.method_overrides("vsd") == (
        "fashion-mnist-vsd.toml",
        ["generator.sigma_init=0.7", 'method.generator_weighting="sigma2"'],
    )


def test_train_runs_alike_resumes_and_marks_finished_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffratio.recipe import load_recipe
    from diffratio.registry import default_registry

    q = load_quality()
    calls: list[tuple[str, str, list[str], str]] = []
    limits: dict[str, float] = {}

    def fake_train(recipe: str, run_dir: Path, sets: list[str], gpu: str) -> str:
        calls.append((recipe, run_dir.name, sets, gpu))
        return run_dir.name

    def fake_wait(procs: dict[str, str], seconds: dict[str, float]) -> dict[str, int]:
        limits.update(seconds)
        return {name: 0 if name == "pre" else 1 if name == "kl-s1" else 143 for name in procs}  # kl-s1 crashes

    monkeypatch.setattr("quality_train.dr_train", fake_train)
    monkeypatch.setattr("quality_train.wait_all", fake_wait)
    runs = tmp_path / "runs"
    checkpoint(runs / "dijs-s1", 300, 90.0)  # interrupted earlier: it continues for the rest of its budget
    argv = [
        "--runs",
        str(runs),
        "--gpus",
        "0,1",
        "--minutes",
        "2",
        "--methods",
        "dijs,kl,vsd",
        "--seeds",
        "0,1",
        "--set",
        "root=DATA",
        "--recipe-set",
        "backbone.model_channels=16",
        "--pretrain-set",
        "run.steps=20",
        "--variant",
        "short: run.steps=500",
    ]
    q.train(options(*argv))
    assert calls[0][:2] == ("fashion-mnist-pretrain.toml", "pretrain")
    assert calls[0][2] == ["dataset.root=DATA", "backbone.model_channels=16", "run.steps=20"]
    assert (runs / "pretrain.finished").exists()
    # then one run per GPU at a time, seed by seed: waves of two
    assert [(name, gpu) for _, name, _, gpu in calls[1:]] == [
        ("dijs-s0", "0"),
        ("kl-s0", "1"),
        ("vsd-s0", "0"),
        ("study-short-s0", "1"),
        ("dijs-s1", "0"),
        ("kl-s1", "1"),
        ("vsd-s1", "0"),
        ("study-short-s1", "1"),
    ]
    assert limits["dijs-s0"] == 120 and limits["dijs-s1"] == 30
    sets = {name: s for _, name, s, _ in calls}
    for name in ("dijs-s0", "vsd-s1", "study-short-s0"):  # all alike: compiled, every checkpoint kept
        assert {
            "strategy.compile=true",
            "run.keep_checkpoints=0",
            "run.checkpoint_every=100",
            "dataset.root=DATA",
            f"method.init='{runs / 'pretrain'}'",
        } <= set(sets[name])
        # --recipe-set may undo what the script sets (compile, for a CPU smoke test); the run's own come last
        assert sets[name].index("backbone.model_channels=16") > sets[name].index("strategy.compile=true")
    assert sets["study-short-s0"][-1] == "run.steps=500" and sets["kl-s0"][-1] == "divergence.name='kl'"
    registry = default_registry()
    for recipe, _, s, _ in calls:  # every run's overrides are valid keys of its recipe
        load_recipe(ROOT / "recipes" / recipe, s, registry=registry)
    assert sorted(p.name for p in runs.glob("*.done")) == sorted(
        f"{n}.done" for n in sets if n not in ("pretrain", "kl-s1")
    )
    assert json.loads((runs / "dijs-s0.done").read_text()) == {"minutes": 2}

    # the recipe as shipped: its own run.steps and compile setting, within the same time limit
    calls.clear()
    q.train(options(*argv[:7], "shipped", "--seeds", "0", *argv[10:16]))  # its data and recipe sets
    assert [(name, s) for _, name, s, _ in calls] == [
        ("shipped-s0", [f"method.init='{runs / 'pretrain'}'", "run.checkpoint_every=100", "run.keep_checkpoints=0",
                        "run.sample_every=0", "dataset.root=DATA", "backbone.model_channels=16", "run.seed=0"]),
    ]
    assert limits["shipped-s0"] == 120
    (runs / "shipped-s0.done").unlink()

    # again: only the crashed run trains (no pretraining); a longer budget continues every run
    calls.clear()
    q.train(options(*argv))
    assert [name for _, name, _, _ in calls] == ["kl-s1"]
    calls.clear()
    q.train(options(*argv[:5], "3", *argv[6:]))
    assert len(calls) == 8


def test_budget_points_choose_the_last_checkpoint_within_each_share() -> None:
    q = load_quality()
    times = [(100, 20.0), (200, 75.0), (300, 140.0), (400, 160.0), (500, 290.0)]
    # 1/4 of 300 s: 75 s (at or below counts); 1/2: 150 s; the final checkpoint for the full budget
    assert q.budget_points(times, 300) == {200: [0.25], 300: [0.5], 500: [1.0]}
    # a checkpoint may stand for two shares; a share before the first checkpoint has none
    assert q.budget_points([(100, 10.0), (200, 200.0)], 300) == {100: [0.25, 0.5], 200: [1.0]}
    assert q.budget_points([(100, 100.0), (200, 280.0)], 300) == {100: [0.5], 200: [1.0]}
    assert q.budget_points([], 300) == {}


def test_checkpoint_times_read_each_state_and_skip_a_damaged_one(tmp_path: Path) -> None:
    q = load_quality()
    checkpoint(tmp_path, 100, 12.5)
    checkpoint(tmp_path, 200, 25.0)
    (tmp_path / "checkpoints" / f"{300:09d}").mkdir()
    (tmp_path / "checkpoints" / f"{300:09d}" / "state.pt").write_bytes(b"not a checkpoint")
    assert q.checkpoint_times(tmp_path) == [(100, 12.5), (200, 25.0)]


def test_jobs_of_finished_runs_and_shards_balance(tmp_path: Path) -> None:
    q = load_quality()
    checkpoint(tmp_path / "pretrain", 2000, 200.0)
    finished(tmp_path, "dijs-s0", 5, [(100, 60.0), (200, 140.0), (300, 280.0)])
    finished(tmp_path, "vsd-s0", 5, [(100, 70.0), (200, 160.0)])
    checkpoint(tmp_path / "kl-s0", 100, 60.0)  # still training: not evaluated
    jobs = q.jobs(tmp_path, options("--num", "100"))
    keys = [j["key"] for j in jobs]
    assert len(keys) == len(set(keys))
    got = sorted((j["kind"], j["run"], j["step"], tuple(j.get("points", ()))) for j in jobs)
    assert got == [
        ("budget", "dijs-s0", 100, (0.25,)),
        ("budget", "dijs-s0", 200, (0.5,)),
        ("budget", "dijs-s0", 300, (1.0,)),
        ("budget", "vsd-s0", 100, (0.25, 0.5)),
        ("budget", "vsd-s0", 200, (1.0,)),
        ("sir", "dijs-s0", 300, ()),
        ("teacher", "pretrain", 2000, ()),
    ]
    sir = next(j for j in jobs if j["kind"] == "sir")
    assert (sir["candidates"], sir["select"], sir["num"], sir["temperature"]) == (8, "sir", 100, 1.0)
    hot = q.jobs(tmp_path, options("--num", "100", "--temperature", "2"))  # a sweep's next row: a new key
    assert next(j for j in hot if j["kind"] == "sir")["key"] not in keys
    parts = q.shards(jobs, 3)
    assert sorted(k["key"] for p in parts for k in p) == sorted(keys)
    loads = sorted(sum(j["cost"] for j in p) for p in parts)
    assert loads[-1] - loads[0] <= max(j["cost"] for j in jobs)  # greedy longest-first: within one job


def test_evaluate_rejects_an_unknown_kind(tmp_path: Path) -> None:
    q = load_quality()
    with pytest.raises(SystemExit, match=r"--kinds: unknown \['final'\]; choose from budget, teacher, sir"):
        q.evaluate(options("--runs", str(tmp_path), "--kinds", "budget,final"))


def fake_rows() -> list[dict]:
    def row(kind: str, run: str, fid: float, **kw: object) -> dict:
        return {
            "kind": kind,
            "run": run,
            "num": 10000,
            "fid": fid,
            "precision": 0.7,
            "recall": 0.5,
            "updates": 1000,
            "train_seconds": 120.0,
            "evaluations": 1,
            "budget": 300.0,
            **kw,
        }

    return [
        row("teacher", "pretrain", 8.65, evaluations=35, updates=2000, train_seconds=270.0),
        row("budget", "dijs-s0", 10.0, points=[0.25], updates=500),
        row("budget", "dijs-s1", 12.0, points=[0.25], updates=510),
        row("budget", "dijs-s0", 8.0, points=[1.0]),
        row("budget", "dijs-s1", 9.0, points=[1.0]),
        row("budget", "vsd-s0", 20.0, points=[0.5, 1.0]),
        row("sir", "dijs-s0", 7.5, evaluations=8, candidates=8, sigma=0.5),
        row("sir", "dijs-s1", 7.7, evaluations=8, candidates=8, sigma=0.5),
        row("sir", "dijs-s0", 7.1, evaluations=8, candidates=8, sigma=0.5, temperature=2.0),
    ]


def test_report_table_means_and_each_seed() -> None:
    q = load_quality()
    lines = q.table(fake_rows()).splitlines()
    assert lines[0].startswith("| samples | budget | network evaluations | FID-10k | precision | recall |")
    assert lines[2].startswith("| teacher: the pretraining's EMA denoiser, Heun | - | 35 | 8.65 | 0.700 |")
    assert lines[3] == (
        "| DiffRatio, DiJS | 1/4 of 5 min | 1 | 11.00 (10.00, 12.00) | 0.700 (0.700, 0.700) | "
        "0.500 (0.500, 0.500) | 505 (500, 510) | 2.00 (2.00, 2.00) |"
    )
    assert lines[4].startswith("| DiffRatio, DiJS | all of 5 min | 1 | 8.50 (8.00, 9.00) |")
    # one checkpoint may stand for two budget points; a seed without a result reads "-"
    assert lines[5].startswith("| VSD, DiffRatio's sigma_init and w(sigma) | 1/2 of 5 min | 1 | 20.00 (20.00, -) |")
    assert lines[6].startswith("| VSD, DiffRatio's sigma_init and w(sigma) | all of 5 min | 1 | 20.00 (20.00, -) |")
    assert lines[7].startswith("| DiffRatio, DiJS + SIR (N = 8, sigma_v = 0.5) | all of 5 min | 8 | 7.60 (7.50, 7.70)")
    # a temperature other than 1 is a row of its own, named
    hot = "| DiffRatio, DiJS + SIR (N = 8, sigma_v = 0.5, T = 2) | all of 5 min | 8 | 7.10 (7.10, -)"
    assert lines[8].startswith(hot), lines[8]
    assert len(lines) == 9


def test_results_file_between_markers(tmp_path: Path) -> None:
    q = load_quality()
    page = tmp_path / "results.md"
    page.write_text(f"# Results\n\nbefore\n{q.BEGIN}\nold table\n{q.END}\nafter\n")
    lines, begin, end = q.marked(page)
    assert (begin, end) == (3, 5)
    (tmp_path / "bare.md").write_text("# Results\n")
    for path in (tmp_path / "bare.md", tmp_path / "missing.md"):
        with pytest.raises(SystemExit) as err:
            q.marked(path)
        assert str(path) in str(err.value) and q.BEGIN in str(err.value) and q.END in str(err.value)


def test_report_prints_and_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    q = load_quality()
    runs = tmp_path / "runs"
    (runs / "eval").mkdir(parents=True)
    study = {**fake_rows()[1], "run": "study-lr-s0", "fid": 9.5}
    (runs / "eval" / "results-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*fake_rows(), study]))
    (runs / "study-lr-s0.sets.json").write_text(json.dumps(["run.seed=0", "method.generator_optimizer.lr=1e-4"]))
    (runs / "command.txt").write_text("python benchmarks/quality.py --runs runs/quality --minutes 5\n")
    page = tmp_path / "results.md"
    page.write_text(f"before\n{q.BEGIN}\nold table\n{q.END}\nafter\n")
    for _ in range(2):  # writing again replaces the table, it does not add another
        q.report(options("report", "--runs", str(runs), "--results", str(page)))
    text = page.read_text()
    assert text.startswith(f"before\n{q.BEGIN}\n`python benchmarks/quality.py --runs runs/quality --minutes 5`: ")
    assert text.endswith(f"lr=1e-4`\n{q.END}\nafter\n") and "old table" not in text and text.count("| teacher") == 1
    head = text.splitlines()[2]
    assert re.search(r": (CPU|.+); torch \S+; \d{4}-\d\d-\d\d \d\d:\d\d UTC; commit [0-9a-f]+(-dirty)?\. ", head)
    out = capsys.readouterr().out
    assert "| DiffRatio, DiJS | 1/4 of 5 min |" in out
    assert "| DiffRatio, DiJS, study-lr | 1/4 of 5 min | 1 | 9.50 (9.50, -) |" in out
    assert "\nstudy-lr: `method.generator_optimizer.lr=1e-4`\n" in text  # the study's own overrides, no seed
