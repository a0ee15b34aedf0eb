"""End to end on CPU: a tiny toy2d run writes every output design.md promises, and the other commands work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import RECIPES, TINY, run_cli, sets


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("toy") / "run"
    res = run_cli("dr-train", str(RECIPES / "toy2d.toml"), "--run-dir", str(run_dir), "--no-progress",
                  *sets(*TINY, "run.sample_every=10", "loggers.console={}"))
    assert res.returncode == 0, res.stderr
    assert "parameters: generator" in res.stdout
    assert "step 30: loss/ratio=" in res.stdout  # the console logger
    lines = [line for line in res.stdout.splitlines() if line.startswith("step 20/30 eta ")]  # --no-progress
    assert len(lines) == 1 and "ratio=" in lines[0] and "img/s=" in lines[0] and len(lines[0]) <= 80
    return run_dir


def test_run_directory_contents(toy_run: Path) -> None:
    info = json.loads((toy_run / "run.json").read_text())
    assert info["config"]["method"]["name"] == "diffratio"
    assert "[method]" in info["recipe_text"]
    assert "run.steps=30" in info["sets"]
    assert info["plugins"]["divergence"]["package"] == "diffratio"
    assert info["parameters"]["generator"] > 0 and info["parameters"]["ratio"] > 0
    assert (toy_run / "checkpoints" / "latest").read_text() == "000000030"
    assert sorted(p.name for p in (toy_run / "samples").iterdir())[-1] == "step-000000030.png"
    line = json.loads((toy_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["step"] == 30
    assert line["energy-distance/energy_distance"] > 0 and line["energy-distance/floor"] > 0


def test_tensorboard_events_hold_scalars_and_images(toy_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(toy_run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    assert {"loss/ratio", "loss/generator", "ratio/accuracy", "images_per_second"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("loss/ratio")] == [10, 20, 30]
    assert "eval/energy-distance/energy_distance" in tags["scalars"]
    assert "samples" in tags["images"]


def test_dr_sample_writes_npz_and_png(toy_run: Path, tmp_path: Path) -> None:
    res = run_cli("dr-sample", str(toy_run), "--num", "300", "--out", str(tmp_path / "s.npz"),
                  "--grid", str(tmp_path / "s.png"))
    assert res.returncode == 0, res.stderr
    with np.load(tmp_path / "s.npz") as data:
        assert data["samples"].shape == (300, 2) and np.isfinite(data["samples"]).all()
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_dr_sample_on_a_non_run_directory(tmp_path: Path) -> None:
    res = run_cli("dr-sample", str(tmp_path), "--out", str(tmp_path / "x.npz"))
    assert res.returncode == 2 and "not a run directory" in res.stderr


def test_dr_plugins_lists_components_with_fields() -> None:
    res = run_cli("dr-plugins", "--kind", "divergence")
    assert res.returncode == 0, res.stderr
    assert "divergence  dijs" in res.stdout
    assert "max_log_weight = 5.0  (float)" in res.stdout
    assert 'function = "hellinger"  (one of "reverse-kl", "kl", "js", "hellinger", "pearson"): which F' in res.stdout


def test_unwritable_run_dir_fails_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = run_cli("dr-train", str(RECIPES / "toy2d.toml"), "--run-dir", str(blocker / "run"), *sets(*TINY))
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
