"""Real SIGINT/SIGTERM to ``dr-train`` processes at start-up, in the ratio warm-up, in the final evaluation and
twice in a row: a clean stop with a one-line message and exit 128 + N, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from diffratio.checkpoint import find_latest

from conftest import RECIPES, TINY, run_cli, sets

ARGS = [str(RECIPES / "toy2d.toml"), "--no-progress", *sets(*TINY, "strategy.threads=1")]

#: dr-train with a test plugin that marks (and, where asked, stalls) one moment of the run
SCRIPT = """
import sys, time
from pathlib import Path
from diffratio import hookimpl
from diffratio.registry import Provider, default_registry

MARK, WHERE = Path(sys.argv.pop(1)), sys.argv.pop(1)

def reached(where, stall=True):
    if WHERE == where:
        MARK.write_text(where)
        if stall:
            time.sleep(120)

class Moments:
    @hookimpl
    def diffratio_on_run_start(self):
        reached("start")
        reached("warmup", stall=False)

    @hookimpl
    def diffratio_on_step_end(self, step):
        if step == 10:
            reached("step")

    @hookimpl
    def diffratio_on_evaluation(self):
        reached("final")

default_registry().register(Moments(), Provider("moments", "tests", "0"))
from diffratio.cli import train
train()
"""


def start(tmp_path: Path, where: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    mark = tmp_path / "mark"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(mark), where, *ARGS, "--run-dir",
                             str(tmp_path / "run"), *sets(*extra)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 240
    while not mark.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, f"the run never reached {where}"
        time.sleep(0.02)
    return proc, mark


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    return proc.returncode, out, err


def test_sigint_at_start_up_stops_cleanly_and_removes_the_new_run_directory(tmp_path: Path) -> None:
    proc, _ = start(tmp_path, "start")
    proc.send_signal(signal.SIGINT)
    rc, _, err = finish(proc)
    assert rc == 128 + signal.SIGINT
    assert err.strip().splitlines()[-1] == ("error: stopped by SIGINT during start-up, before training began. "
                                            "Re-run the same command to resume.")
    assert not (tmp_path / "run").exists()  # created by this start, holding nothing else


def test_sigterm_in_the_warm_up_checkpoints_and_resumes(tmp_path: Path) -> None:
    proc, _ = start(tmp_path, "warmup", "method.warmup_ratio_steps=3000", "run.steps=3100",
                    "run.checkpoint_every=1000", "run.log_every=1000")
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc)
    assert rc == 128 + signal.SIGTERM and "stopped by SIGTERM at step" in err
    step = int(find_latest(tmp_path / "run" / "checkpoints").name)
    assert f"stopped by SIGTERM at step {step}; checkpoint written to" in err and step < 3100


def test_sigterm_in_the_final_evaluation_then_the_rerun_finishes(tmp_path: Path) -> None:
    proc, _ = start(tmp_path, "final")
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc)
    assert rc == 128 + signal.SIGTERM
    assert "stopped by SIGTERM during the final evaluation at step 30; its checkpoint is written" in err
    assert find_latest(tmp_path / "run" / "checkpoints").name == "000000030"
    assert "finished" not in json.loads((tmp_path / "run" / "run.json").read_text())
    again = run_cli("dr-train", *ARGS, "--run-dir", str(tmp_path / "run"))
    assert again.returncode == 0, again.stderr
    assert "resuming from step 30" in again.stdout and "finished 30 steps" in again.stdout
    assert json.loads((tmp_path / "run" / "run.json").read_text())["finished"] == 30


def test_a_second_signal_stops_at_once_with_one_line(tmp_path: Path) -> None:
    proc, _ = start(tmp_path, "step")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc)
    assert time.time() - t0 < 10 and rc == 128 + signal.SIGTERM
    assert "SIGTERM received: finishing the step and writing a checkpoint" in err
    assert err.strip().splitlines()[-1] == ("SIGTERM received again: stopping at once (the last committed "
                                            "checkpoint is kept)")
