"""benchmarks/quality.py: which evaluations it plans from the checkpoints on disk, and how it shares them out."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from conftest import ROOT


def load_quality():  # noqa: ANN201 - a module loaded from a file
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def eval_args(**kw: object) -> argparse.Namespace:
    """``evaluate``'s options as its parser gives them by default, with ``kw`` over them."""
    return argparse.Namespace(**{"num": 10, "curve_num": 5, "sweep_num": 5, "sigma": 0.03, "verified": "diffratio-dijs",
                                 "at_steps": [], "study_curves": False, **kw})


def checkpoint(run_dir: Path, step: int) -> None:
    """A committed checkpoint folder as ``list_checkpoints`` sees one (a step-named folder, not empty)."""
    folder = run_dir / "checkpoints" / f"{step:09d}"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text("{}")


def test_jobs_cover_every_checkpoint_and_shards_balance(tmp_path: Path) -> None:
    q = load_quality()
    for name, steps in {"pretrain": [3000], "diffratio-dijs": [500, 1000, 1234], "vsd": [500, 900]}.items():
        for s in steps:
            checkpoint(tmp_path / name, s)
    args = eval_args(num=100, curve_num=20, sweep_num=50)
    jobs = q.jobs(tmp_path, args)
    keys = [j["key"] for j in jobs]
    assert len(keys) == len(set(keys))
    by_kind: dict[str, list[dict]] = {}
    for j in jobs:
        by_kind.setdefault(j["kind"], []).append(j)
    # curves: every checkpoint but the last of each one-step run; finals: each run's last and the pretraining
    assert sorted((j["run"], j["step"]) for j in by_kind["curve"]) == [("diffratio-dijs", 500),
                                                                        ("diffratio-dijs", 1000), ("vsd", 500)]
    assert sorted((j["run"], j["step"]) for j in by_kind["final"]) == [("diffratio-dijs", 1234), ("pretrain", 3000),
                                                                        ("vsd", 900)]
    # the verifier: N in 2..16, best and SIR, of DiffRatio-DiJS's last checkpoint; the sigma sweep at N = 8
    assert len(by_kind["verifier"]) == 2 * len(q.CANDIDATES)
    assert {j["step"] for j in by_kind["verifier"] + by_kind["sigma"]} == {1234}
    assert sorted(j["sigma"] for j in by_kind["sigma"]) == sorted(q.SIGMA_SWEEP)
    assert next(j for j in by_kind["final"] if j["run"] == "pretrain")["cost"] > by_kind["final"][0]["cost"] / 2

    parts = q.shards(jobs, 3)
    assert sorted(k["key"] for p in parts for k in p) == sorted(keys)
    loads = sorted(sum(j["cost"] for j in p) for p in parts)
    assert loads[-1] - loads[0] <= max(j["cost"] for j in jobs)  # greedy longest-first: within one job


def test_done_keys_skip_finished_evaluations(tmp_path: Path) -> None:
    q = load_quality()
    (tmp_path / "results-0.jsonl").write_text('{"key": "a", "fid": 1.0}\n\n{"key": "b", "fid": 2.0}\n')
    (tmp_path / "results-x1.jsonl").write_text('{"key": "c", "fid": 3.0}\n')
    assert q.done_keys(tmp_path) == {"a", "b", "c"}


def test_plan_of_methods_and_study_variants(tmp_path: Path) -> None:
    q = load_quality()

    def args(methods: str, *variants: str) -> argparse.Namespace:
        return argparse.Namespace(methods=methods, variants=list(variants))

    assert [name for name, *_ in q.plan(args("all"))] == list(q.ONE_STEP)
    got = q.plan(args("vsd", "lr: method.generator_optimizer.lr=1e-4 generator.sigma_init=1.0"))
    study = ("study-lr", "fashion-mnist.toml", ["method.generator_optimizer.lr=1e-4", "generator.sigma_init=1.0"])
    assert got == [("vsd", "fashion-mnist-vsd.toml", []), study]
    assert q.plan(args("none")) == []
    with pytest.raises(SystemExit, match="unknown"):
        q.plan(args("dijs"))
    with pytest.raises(SystemExit, match="LABEL: KEY=VALUE"):
        q.plan(args("none", "no-colon"))

    # study runs get a final evaluation (no curve)
    for name, steps in {"study-lr": [500, 700], "diffratio-kl": [500, 700]}.items():
        for s in steps:
            checkpoint(tmp_path / name, s)
    jobs = q.jobs(tmp_path, eval_args())
    assert sorted((j["kind"], j["run"], j["step"]) for j in jobs) == [
        ("curve", "diffratio-kl", 500), ("final", "diffratio-kl", 700), ("final", "study-lr", 700)]
    # asked for: the study's curves, full-size FIDs at equal updates, and the verifier on a study run
    jobs = q.jobs(tmp_path, eval_args(study_curves=True, at_steps=[500, 600, 700], verified="study-lr"))
    assert sorted((j["kind"], j["run"], j["step"], j["num"]) for j in jobs if j["kind"] in ("curve", "final")) == [
        ("curve", "diffratio-kl", 500, 5), ("curve", "study-lr", 500, 5), ("final", "diffratio-kl", 500, 10),
        ("final", "diffratio-kl", 700, 10), ("final", "study-lr", 500, 10), ("final", "study-lr", 700, 10)]
    assert {(j["run"], j["step"]) for j in jobs if j["kind"] in ("verifier", "sigma")} == {("study-lr", 700)}


def test_a_variant_overrides_what_every_run_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A variant's own ``run.steps`` (a learning-rate decay over a fixed length) wins over the shared
    ``run.steps=1000000``: its overrides come last on the command line."""
    q = load_quality()
    calls: dict[str, list[str]] = {}
    monkeypatch.setattr(q, "last_step", lambda run_dir: 10**9)  # the pretraining is done
    monkeypatch.setattr(q, "dr_train", lambda recipe, run_dir, sets, gpu: calls.setdefault(run_dir.name, sets))
    monkeypatch.setattr(q, "wait_all", lambda procs, seconds: None)
    args = argparse.Namespace(runs=str(tmp_path), gpus="0,1", methods="diffratio-kl", per_gpu=1, every=500,
                              variants=["decay: run.steps=5600 method.generator_optimizer.lr_decay='cosine'"],
                              sets=["root=DATA"], recipe_sets=[], pretrain_steps=3000, pretrain_seconds=1,
                              pretrain_only=False, seconds=1)
    q.train(args)
    decay = calls["study-decay"]
    assert decay.index("run.steps=5600") > decay.index("run.steps=1000000")
    assert calls["diffratio-kl"][-1] == "divergence.name='kl'" and "dataset.root=DATA" in calls["diffratio-kl"]


def test_waves_share_each_gpu_before_the_next_wave() -> None:
    q = load_quality()
    runs = ["a", "b", "c", "d", "e"]
    assert q.waves(runs, ["0", "1"], 1) == [[("0", "a"), ("1", "b")], [("0", "c"), ("1", "d")], [("0", "e")]]
    # two per GPU: spread over the GPUs first, then doubled up; the fifth run waits for a second wave
    assert q.waves(runs, ["0", "1"], 2) == [[("0", "a"), ("1", "b"), ("0", "c"), ("1", "d")], [("0", "e")]]


def test_evaluate_rejects_an_unknown_kind(tmp_path: Path) -> None:
    q = load_quality()
    args = eval_args(runs=str(tmp_path), gpus="0", kinds="final,curves", weights="")
    with pytest.raises(SystemExit, match=r"--kinds: unknown \['curves'\]; choose from final, curve, verifier, sigma"):
        q.evaluate(args)


def test_report_n1_row_at_the_verifier_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A final FID of the verified run at another step (an equal-updates comparison) is not its N = 1 row."""
    import json

    q = load_quality()
    (tmp_path / "eval").mkdir()
    rows = [{"kind": "final", "run": q.VERIFIED, "step": 5795, "num": 10, "fid": 10.17, "train_seconds": 60.0},
            {"kind": "final", "run": q.VERIFIED, "step": 4000, "num": 10, "fid": 11.55, "train_seconds": 40.0},
            {"kind": "verifier", "run": q.VERIFIED, "step": 5795, "num": 10, "candidates": 8, "select": "sir",
             "sigma": 0.5, "fid": 9.83}]
    (tmp_path / "eval" / "results-0.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    q.report(argparse.Namespace(runs=str(tmp_path)))
    text = capsys.readouterr().out
    verifier = text.split("### Verifier (")[1].split("###")[0]
    assert "10.17" in verifier and "9.83" in verifier and "11.55" not in verifier
    assert "11.55" in text.split("### Final generators")[1].split("###")[0]  # still among the finals
