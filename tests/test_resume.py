"""Resuming: a run killed mid-way (SIGKILL, or SIGTERM with its graceful checkpoint) and re-run with the
same command ends with exactly the parameters of an uninterrupted run (CPU, bit for bit)."""

from __future__ import annotations

import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from diffratio.checkpoint import find_latest, load_state

from conftest import RECIPES, TINY, assert_same, logged, run_cli, script, sets

ARGS = [str(RECIPES / "toy2d.toml"), "--no-progress",
        *sets(*TINY, "run.steps=400", "run.checkpoint_every=25", "run.log_every=25", "strategy.threads=1",
              "loggers.tensorboard=false")]


def final_state(run_dir: Path) -> dict:
    latest = find_latest(run_dir / "checkpoints")
    assert latest is not None and latest.name == "000000400"
    return load_state(latest)["method"]


def interrupt_after_first_checkpoint(run_dir: Path, sig: signal.Signals, args: list[str] = ARGS
                                     ) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([script("dr-train"), *args, "--run-dir", str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "latest").exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.time() < deadline
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    res = run_cli("dr-train", *ARGS, "--run-dir", str(run_dir))
    assert res.returncode == 0, res.stderr
    return final_state(run_dir)


def test_resume_after_sigkill_is_bit_exact(reference: dict, tmp_path: Path) -> None:
    killed = interrupt_after_first_checkpoint(tmp_path, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    res = run_cli("dr-train", *ARGS, "--run-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "resuming from step" in res.stdout
    assert_same(final_state(tmp_path), reference)


def test_sigterm_checkpoints_and_resumes_bit_exact(reference: dict, tmp_path: Path) -> None:
    stopped = interrupt_after_first_checkpoint(tmp_path, signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert "stopped by SIGTERM at step" in stopped.stderr and "Re-run the same command" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    step = int(find_latest(tmp_path / "checkpoints").name)
    assert 0 < step < 400
    res = run_cli("dr-train", *ARGS, "--run-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert f"resuming from step {step}" in res.stdout
    assert_same(final_state(tmp_path), reference)


def test_rerun_of_finished_run_changes_nothing(reference: dict, tmp_path: Path) -> None:
    assert run_cli("dr-train", *ARGS, "--run-dir", str(tmp_path)).returncode == 0
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    again = run_cli("dr-train", *ARGS, "--run-dir", str(tmp_path))
    assert again.returncode == 0 and f"run {tmp_path} is complete: trained 400 steps" in again.stdout
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files
    assert_same(final_state(tmp_path), reference)


def test_lr_decay_resumes_bit_exact(reference: dict, tmp_path: Path) -> None:
    """The learning rate is a function of the step alone: a run with decaying learning rates (the ratio
    estimator's already decaying at the kill, the generator's from step 100) resumes bit for bit."""
    args = [*ARGS, *sets("method.generator_optimizer.lr_decay='cosine'",
                         "method.generator_optimizer.lr_decay_start=0.25", "method.ratio_optimizer.lr_decay='linear'",
                         "method.ratio_optimizer.lr_final=0.1", "loggers.console={}")]
    whole = run_cli("dr-train", *args, "--run-dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    lrs = logged(whole.stdout)
    gen, ratio = lrs["generator/lr"], lrs["ratio/lr"]  # means over each 25-step log interval
    assert len(gen) == 16 and gen[:4] == pytest.approx([1e-4] * 4) and gen[4] < 0.999e-4 and gen[-1] < 2e-6
    base = tomllib.loads((RECIPES / "toy2d.toml").read_text())["method"]["ratio_optimizer"]["lr"]
    assert ratio[0] < base and 0.1 * base < ratio[-1] < 0.15 * base  # linear down to 0.1 * the recipe's lr
    assert gen == sorted(gen, reverse=True) and ratio == sorted(ratio, reverse=True)
    with pytest.raises(AssertionError):  # the decay did change training
        assert_same(final_state(tmp_path / "whole"), reference)
    killed = interrupt_after_first_checkpoint(tmp_path / "resumed", signal.SIGKILL, args)
    assert killed.returncode == -signal.SIGKILL
    res = run_cli("dr-train", *args, "--run-dir", str(tmp_path / "resumed"))
    assert res.returncode == 0, res.stderr
    assert "resuming from step" in res.stdout
    assert_same(final_state(tmp_path / "resumed"), final_state(tmp_path / "whole"))


def test_resume_refuses_changed_meaning_allows_harmless(tmp_path: Path) -> None:
    tiny = [str(RECIPES / "toy2d.toml"), "--no-progress", "--run-dir", str(tmp_path), *sets(*TINY)]
    assert run_cli("dr-train", *tiny).returncode == 0
    changed = run_cli("dr-train", *tiny, *sets("backbone.hidden=48", "divergence.name=kl"))
    assert changed.returncode == 2
    assert "backbone.hidden: 32 -> 48" in changed.stderr and "divergence.name: 'dijs' -> 'kl'" in changed.stderr
    longer = run_cli("dr-train", *tiny, *sets("run.steps=40"))
    assert longer.returncode == 0, longer.stderr
    assert "resuming from step 30" in longer.stdout
