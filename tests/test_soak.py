"""Soak: 2-D training for 20k steps with checkpoints every 500 is killed with SIGKILL ten times at random
moments (three of them while a checkpoint is being written, when the poll catches one) and resumed each time;
it ends with exactly the parameters of an uninterrupted run (CPU, bit for bit).

Slow (tens of minutes on a CPU): excluded from the default run. Run it with
``python -m pytest -m slow -s tests/test_soak.py`` (docs/reliability.md).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from diffratio.checkpoint import find_latest, load_state

from conftest import RECIPES, TINY, assert_same, run_cli, script, sets

pytestmark = pytest.mark.slow

STEPS, EVERY, KILLS = 20_000, 500, 10
ARGS = [str(RECIPES / "toy2d.toml"), "--no-progress",
        *sets(*TINY, f"run.steps={STEPS}", f"run.checkpoint_every={EVERY}", f"run.log_every={EVERY}",
              "strategy.threads=1", "loggers.tensorboard=false")]
SEED = int(os.environ.get("DIFFRATIO_SOAK_SEED", "8"))


def latest_step(root: Path) -> int:
    try:
        return int((root / "latest").read_text())
    except (OSError, ValueError):
        return -1


def final_state(run_dir: Path) -> dict:
    latest = find_latest(run_dir / "checkpoints")
    assert latest is not None and latest.name == f"{STEPS:09d}"
    return load_state(latest)


def kill_once(run_dir: Path, target: int, during_write: bool, seconds_per_interval: float) -> dict:
    """Start (or resume) the run, wait for the checkpoint of ``target``, then SIGKILL it: at a random moment of
    the next interval, or as soon as a checkpoint write is seen in progress."""
    root = run_dir / "checkpoints"
    proc = subprocess.Popen([script("dr-train"), *ARGS, "--run-dir", str(run_dir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 3600
    while latest_step(root) < target:
        assert proc.poll() is None, f"the run ended before step {target}: {proc.communicate()[1][-2000:]}"
        assert time.time() < deadline, f"no checkpoint of step {target} within an hour"
        time.sleep(0.05)
    hit_write = False
    if during_write:
        until = time.time() + 2 * seconds_per_interval
        while time.time() < until and not hit_write:
            hit_write = any(".tmp-" in p.name for p in root.iterdir())
            time.sleep(0.001)
    else:
        time.sleep(random.uniform(0, seconds_per_interval))
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    return {"after_checkpoint": target, "during_write": during_write, "caught_a_write": hit_write,
            "latest_left": latest_step(root)}


def test_random_sigkills_over_20k_steps_end_bit_exact(tmp_path: Path) -> None:
    random.seed(SEED)
    t0 = time.time()
    res = run_cli("dr-train", *ARGS, "--run-dir", str(tmp_path / "reference"), timeout=7200)
    assert res.returncode == 0, res.stderr[-3000:]
    seconds_per_interval = (time.time() - t0) / (STEPS / EVERY)
    reference = final_state(tmp_path / "reference")

    run_dir = tmp_path / "killed"
    targets = sorted(random.sample(range(EVERY, STEPS - EVERY, EVERY), KILLS))
    kills = [kill_once(run_dir, target, i in (2, 5, 8), seconds_per_interval) for i, target in enumerate(targets)]
    res = run_cli("dr-train", *ARGS, "--run-dir", str(run_dir), timeout=7200)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from step" in res.stdout
    print(f"\nsoak: seed {SEED}, reference run {seconds_per_interval * STEPS / EVERY:.0f} s, "
          f"{seconds_per_interval:.1f} s per {EVERY} steps; kills: {kills}; total {time.time() - t0:.0f} s")

    final = final_state(run_dir)
    assert final["step"] == STEPS
    assert_same(final["method"], reference["method"])
    assert_same(final["data"], reference["data"])
