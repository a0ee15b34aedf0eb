"""The run directory under attack (docs/reliability.md): a second process, failed writes of any kind (a real
full tmpfs where the machine allows it), checkpoints that verify but cannot be read, a stale ``latest``,
a damaged or missing ``run.json``, foreign folders, a finished run re-run, a failed start."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffratio import CheckpointError, DiffRatioError
from diffratio.checkpoint import META_FILE, find_latest, list_checkpoints, load_state
from diffratio.engine import Run, training_loop
from diffratio.lock import LOCK_FILE
from diffratio.recipe import load_recipe
from diffratio.registry import Registry

from conftest import RECIPES, TINY, assert_same

BASE = [*TINY, "strategy.threads=1", "loggers.tensorboard=false"]  # 30 steps, checkpoints every 10, keep 2
REGISTRY = Registry().load(entry_points=False)
ENOSPC_FROM_TORCH = ("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0: PytorchStreamWriter "
                     "failed writing file data/0: file write failed")


def train(run_dir: Path, *extra: str) -> Run:
    recipe = load_recipe(RECIPES / "toy2d.toml", [*BASE, *extra], registry=REGISTRY)
    return training_loop(recipe, run_dir, REGISTRY, progress=False)


def names(run_dir: Path) -> list[str]:
    return [p.name for p in list_checkpoints(run_dir / "checkpoints")]


def leftovers(run_dir: Path) -> list[str]:
    return [str(p) for p in run_dir.rglob("*") if ".tmp-" in p.name]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("base") / "run"
    train(run_dir)
    return run_dir


@pytest.fixture
def run_copy(base_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base_run, tmp_path / "run"))


# ---- the lock ----

HOLD = """
import sys, time
from pathlib import Path
from diffratio.lock import RunLock
RunLock(Path(sys.argv[1])).acquire()
(Path(sys.argv[1]) / "checkpoints" / ".tmp-000000040-1").mkdir(parents=True)  # its write in flight
print("held", flush=True)
time.sleep(600)
"""


def test_second_process_is_refused_and_a_dead_holder_taken_over(run_copy: Path, capsys) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_copy)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.time()
        with pytest.raises(DiffRatioError, match=rf"run directory .*run is in use by another run \(host \S+, pid "
                                                 rf"{holder.pid}, started 20\d\d-"):
            train(run_copy, "run.steps=40")
        assert time.time() - t0 < 5  # refused at once
        assert (run_copy / "checkpoints" / ".tmp-000000040-1").exists()  # the holder's files are untouched
        assert names(run_copy) == ["000000020", "000000030"]
    finally:
        holder.kill()
        holder.wait()
    capsys.readouterr()
    assert train(run_copy, "run.steps=40").step == 40  # flock died with its holder: a stale lock
    err = capsys.readouterr().err
    assert f"taking over the lock of {run_copy}: its holder (host" in err and f"pid {holder.pid}" in err
    assert "no longer running" in err and ".tmp-000000040-1: an unfinished checkpoint write" in err
    assert not (run_copy / LOCK_FILE).exists()  # released at the end of the run


# ---- failed writes ----


def test_torch_save_runtime_error_on_a_full_disk_is_a_clean_error(run_copy: Path, monkeypatch) -> None:
    def full(obj: object, fh, *args, **kwargs) -> None:
        fh.write(b"\0" * 64)
        raise RuntimeError(ENOSPC_FROM_TORCH)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match=r"could not write the checkpoint of step 40 into .*checkpoints: "
                                              r"RuntimeError: \[enforce fail at inline_container\.cc:672\].*file "
                                              r"write failed\. Earlier checkpoints are untouched"):
        train(run_copy, "run.steps=40")
    monkeypatch.undo()
    assert names(run_copy) == ["000000020", "000000030"] and not leftovers(run_copy)
    assert find_latest(run_copy / "checkpoints").name == "000000030"
    assert (run_copy / "checkpoints" / "latest").read_text() == "000000030"


def test_failed_run_json_write_leaves_no_temp_file(run_copy: Path, monkeypatch) -> None:
    real_fsync = os.fsync

    def eio(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(".run.json.tmp-"):
            raise OSError(5, os.strerror(5))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(CheckpointError, match=r"could not write .*run\.json: OSError: \[Errno 5\] Input/output error"):
        train(run_copy, "run.steps=40")
    monkeypatch.undo()
    assert not list(run_copy.glob(".run.json.tmp-*")) and names(run_copy) == ["000000020", "000000030"]


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_real_full_disk(base_run: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "4m"):
        pytest.skip("needs root and `mount -t tmpfs` (not available here)")
    try:
        run_dir = Path(shutil.copytree(base_run, disk / "run"))
        filler = disk / "filler"
        free = shutil.disk_usage(disk).free
        with open(filler, "wb") as fh:  # leave room for run.json, not for a checkpoint
            fh.write(b"\0" * max(free - 48 * 1024, 0))
        with pytest.raises(CheckpointError, match=r"could not write the checkpoint of step 40 .*(No space left|file "
                                                  r"write failed)"):
            train(run_dir, "run.steps=40", "run.min_free_disk_gb=0")
        assert names(run_dir) == ["000000020", "000000030"] and not leftovers(run_dir)
        assert find_latest(run_dir / "checkpoints").name == "000000030"
        filler.unlink()
        assert train(run_dir, "run.steps=40", "run.min_free_disk_gb=0").step == 40
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# ---- resume picks the newest usable checkpoint ----


def _rewrite_state(ck: Path, obj: object) -> None:
    """Replace state.pt and make its checksum match again: a file that verifies but is wrong."""
    if isinstance(obj, bytes):
        (ck / "state.pt").write_bytes(obj)
    else:
        torch.save(obj, ck / "state.pt")
    import hashlib

    meta = json.loads((ck / META_FILE).read_text())
    meta["files"]["state.pt"] = hashlib.sha256((ck / "state.pt").read_bytes()).hexdigest()
    (ck / META_FILE).write_text(json.dumps(meta))


def test_resume_takes_the_newest_committed_checkpoint_whatever_latest_says(run_copy: Path, capsys) -> None:
    (run_copy / "checkpoints" / "latest").write_text("000000020")  # killed between the rename and the pointer
    assert train(run_copy, "run.steps=40").step == 40
    assert "resuming from step 30" in capsys.readouterr().out


@pytest.mark.parametrize("content, reason", [
    (b"not a pickle at all" * 10, r"could not be read: \w+Error: .+"),
    ({"step": 30, "data": 1}, r"holds no run state \(no 'step' and 'method'\)"),
], ids=["unpicklable", "no-method"])
def test_checkpoint_that_verifies_but_cannot_be_read_falls_back(run_copy: Path, content, reason, capsys) -> None:
    _rewrite_state(run_copy / "checkpoints" / "000000030", content)
    with pytest.warns(UserWarning, match=rf"skipping damaged checkpoint .*000000030: .*000000030/state\.pt.*{reason}"):
        run = train(run_copy, "run.steps=40")
    assert "resuming from step 20" in capsys.readouterr().out and run.step == 40


def test_damaged_run_json_is_rebuilt_from_the_checkpoint(run_copy: Path, capsys) -> None:
    (run_copy / "run.json").write_text("{ this is not json")
    with pytest.warns(UserWarning, match=r"run\.json cannot be read: JSONDecodeError: .*; rebuilt from the config of "
                                         r"the checkpoint"):
        assert train(run_copy, "run.steps=40").step == 40
    info = json.loads((run_copy / "run.json").read_text())
    assert info["config"]["run"]["steps"] == 40 and info["finished"] == 40


def test_missing_run_json_still_refuses_a_changed_meaning(run_copy: Path) -> None:
    (run_copy / "run.json").unlink()
    with pytest.warns(UserWarning, match="run.json is missing; rebuilt from the config of the checkpoint"):
        with pytest.raises(DiffRatioError, match=r"holds a checkpoint of a different configuration:\n  - "
                                                 r"method\.generator_optimizer\.lr: 0\.0001 -> 0\.001"):
            train(run_copy, "run.steps=40", "method.generator_optimizer.lr=1e-3")
    assert names(run_copy) == ["000000020", "000000030"]


def test_empty_and_foreign_folders_are_ignored_and_never_kept(run_copy: Path) -> None:
    root = run_copy / "checkpoints"
    (root / "000000099").mkdir()
    (root / "notes").mkdir()
    with pytest.warns(UserWarning, match=r"ignoring .*/000000099: not a checkpoint"):
        run = train(run_copy, "run.steps=50")
    assert run.step == 50 and names(run_copy) == ["000000040", "000000050"]  # two real ones kept
    assert (root / "000000099").is_dir() and (root / "notes").is_dir()


# ---- a finished run, a failed start ----


def test_rerun_of_a_finished_run_changes_nothing(run_copy: Path, capsys) -> None:
    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    run = train(run_copy)
    out = capsys.readouterr().out
    assert f"run {run_copy} is complete: trained 30 steps (run.steps = 30)" in out and "Raise run.steps" in out
    assert run.step == 30 and run.finished
    assert {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()} == before
    assert train(run_copy, "run.steps=40").step == 40  # raising run.steps trains on
    assert json.loads((run_copy / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 40


def test_failed_start_removes_the_run_directory_it_created(tmp_path: Path) -> None:
    with pytest.raises(DiffRatioError, match="run.min_free_disk_gb"):
        train(tmp_path / "new", "run.min_free_disk_gb=1e9")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "mine.txt").write_text("a user's file")
    with pytest.raises(DiffRatioError, match="run.min_free_disk_gb"):
        train(tmp_path / "kept", "run.min_free_disk_gb=1e9")
    assert (tmp_path / "kept" / "mine.txt").exists()


def test_resume_after_the_change_is_bit_exact(base_run: Path, tmp_path: Path) -> None:
    """Reads of the device flags once per window do not change training: 30 steps in two pieces (stopped at 20)
    end where the uninterrupted run did."""
    run_dir = tmp_path / "run"
    train(run_dir, "run.steps=20")
    train(run_dir)
    assert_same(load_state(find_latest(run_dir / "checkpoints"))["method"],
                load_state(find_latest(base_run / "checkpoints"))["method"])
