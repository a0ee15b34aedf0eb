"""Faults and how a run survives them: damaged and failed checkpoint writes, a full or unwritable disk,
non-finite losses, changed recipes, bad 2-D data and failing plugin hooks (docs/reliability.md).

Most runs here are in-process (``training_loop``) on the tiny 2-D recipe, to stay fast; one test kills a
``dr-train`` process in the middle of a checkpoint write.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from torch import nn

from diffratio import CheckpointError, DataError, DiffRatioError, Divergence, DivergenceSpec, OptimizerConfig, hookimpl
from diffratio.checkpoint import find_latest, list_checkpoints, load_state
from diffratio.engine import Diverged, Run, training_loop
from diffratio.recipe import Recipe, load_recipe
from diffratio.registry import Provider, Registry
from diffratio_builtins.datasets.toy2d import NpzPoints
from diffratio_builtins.methods.common import make_ema, update_ema
from diffratio_builtins.strategies.single import LocalTrainable

from conftest import RECIPES, TINY, assert_same

BASE = [*TINY, "strategy.threads=1", "loggers.tensorboard=false"]  # 30 steps, checkpoints every 10, keep 2


class NanAfter(Divergence):
    """DiJS whose weight is NaN for generator steps ``good_steps + 1 .. good_steps + bad_steps`` (a blow-up)."""

    @attrs.frozen(kw_only=True)
    class Config:
        good_steps: int = 25
        bad_steps: int = 1_000_000

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        self.calls = 0  # one call per generator step

    def weight(self, f: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        c = self.config
        h = 0.5 * torch.sigmoid(-f)
        return h * math.nan if c.good_steps < self.calls <= c.good_steps + c.bad_steps else h

    def F(self, r: torch.Tensor) -> torch.Tensor:
        return 0.5 * (r * torch.log(r) - (1 + r) * torch.log((1 + r) / 2))


class Probe:
    """A test plugin: the NaN divergence, and a record of every logged scalar."""

    def __init__(self) -> None:
        self.logged: dict[int, dict[str, float]] = {}

    @hookimpl
    def diffratio_divergences(self):
        yield DivergenceSpec(name="nan-after", cls=NanAfter)

    @hookimpl
    def diffratio_on_step_end(self, run: Run, step: int, scalars: dict[str, float]) -> None:
        self.logged[step] = dict(scalars)


def registry_with(plugin: object, name: str = "probe") -> Registry:
    reg = Registry()
    reg.register(plugin, Provider(name, f"pkg-{name}", "1.0"))
    return reg.load(entry_points=False)


def recipe(*extra: str, registry: Registry | None = None) -> Recipe:
    return load_recipe(RECIPES / "toy2d.toml", [*BASE, *extra], registry=registry or registry_with(Probe()))


def train(run_dir: Path, *extra: str, registry: Registry | None = None) -> Run:
    reg = registry or registry_with(Probe())
    return training_loop(recipe(*extra, registry=reg), run_dir, reg, progress=False)


def names(run_dir: Path) -> list[str]:
    return [p.name for p in list_checkpoints(run_dir / "checkpoints")]


def all_finite(obj: object) -> bool:
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, dict):
        return all(all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(all_finite(v) for v in obj)
    return True


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 30-step run with the checkpoints of steps 20 and 30."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    train(run_dir)
    assert names(run_dir) == ["000000020", "000000030"]
    return run_dir


@pytest.fixture
def run_copy(base_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base_run, tmp_path / "run"))


# --------------------------------------------------------------------------------------------------
# 2. damaged checkpoints, crash during a write
# --------------------------------------------------------------------------------------------------


def _truncate(ck: Path) -> str:
    data = (ck / "state.pt").read_bytes()
    (ck / "state.pt").write_bytes(data[: len(data) // 2])
    return r"state\.pt is corrupted"


def _flip_byte(ck: Path) -> str:
    data = bytearray((ck / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (ck / "state.pt").write_bytes(bytes(data))
    return r"state\.pt is corrupted \(checksum mismatch\)"


def _drop_meta(ck: Path) -> str:
    (ck / "meta.json").unlink()
    return r"meta\.json is missing"


@pytest.mark.parametrize("damage", [_truncate, _flip_byte, _drop_meta], ids=["truncated", "bit-flip", "no-meta"])
def test_damaged_checkpoint_is_named_and_resume_falls_back(run_copy: Path, damage, capsys) -> None:
    expected = damage(run_copy / "checkpoints" / "000000030")
    with pytest.warns(UserWarning, match=rf"skipping damaged checkpoint .*000000030: .*000000030/{expected}"):
        run = train(run_copy, "run.steps=40")
    assert "resuming from step 20" in capsys.readouterr().out
    assert run.step == 40 and names(run_copy)[-1] == "000000040"


def test_all_checkpoints_damaged_refuses_to_start_afresh(run_copy: Path) -> None:
    for step in ("000000020", "000000030"):
        _truncate(run_copy / "checkpoints" / step)
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        with pytest.raises(CheckpointError, match="every checkpoint under .* is damaged"):
            train(run_copy, "run.steps=40")
    assert names(run_copy) == ["000000020", "000000030"]  # nothing deleted or overwritten


def test_leftovers_of_a_killed_write_are_ignored_and_removed(run_copy: Path, capsys) -> None:
    root = run_copy / "checkpoints"
    (root / ".tmp-000000040-99999").mkdir()
    (root / ".tmp-000000040-99999" / "state.pt").write_bytes(b"PK\x03\x04 half a file")
    (root / ".latest.tmp-99999").write_bytes(b"0000")
    assert find_latest(root).name == "000000030"
    run = train(run_copy, "run.steps=40")
    err = capsys.readouterr().err
    assert ".tmp-000000040-99999: an unfinished checkpoint write of a killed run" in err
    assert ".latest.tmp-99999" in err
    assert run.step == 40 and not [p for p in root.iterdir() if ".tmp-" in p.name]


KILL_DURING_SECOND_WRITE = """
import io, time, torch
real_save, calls = torch.save, []
def stalling_save(obj, fh, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # the checkpoint of step 20: half of it reaches the disk, then the process hangs
        buf = io.BytesIO(); real_save(obj, buf, *args, **kwargs)
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2]); fh.flush()
        time.sleep(600)
    return real_save(obj, fh, *args, **kwargs)
torch.save = stalling_save
from diffratio.cli import train
train()
"""


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(base_run: Path, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    args = [str(RECIPES / "toy2d.toml"), "--run-dir", str(run_dir), "--no-progress"]
    for s in BASE:
        args += ["--set", s]
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_SECOND_WRITE, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    partial = run_dir / "checkpoints" / f".tmp-000000020-{proc.pid}" / "state.pt"
    try:
        deadline = time.time() + 240
        while not (partial.exists() and partial.stat().st_size > 0):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.time() < deadline, "the checkpoint write of step 20 never started"
            time.sleep(0.05)
        time.sleep(0.2)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert names(run_dir) == ["000000010"] and find_latest(run_dir / "checkpoints").name == "000000010"

    run = train(run_dir)
    out, err = capsys.readouterr()
    assert "resuming from step 10" in out and "unfinished checkpoint write of a killed run" in err
    assert run.step == 30 and not partial.parent.exists()
    # the resumed run ends where the uninterrupted one did, bit for bit
    assert_same(load_state(find_latest(run_dir / "checkpoints"))["method"],
                load_state(find_latest(base_run / "checkpoints"))["method"])


# --------------------------------------------------------------------------------------------------
# 4. disk full, unwritable run directory
# --------------------------------------------------------------------------------------------------


def test_disk_full_during_a_checkpoint_write(run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(obj: object, fh, *args, **kwargs) -> None:
        fh.write(b"\0" * 4096)  # part of the file reached the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"checkpoint of step 40 .*No space left on device.*Earlier "
                                              r"checkpoints are untouched"):
        train(run_copy, "run.steps=40")
    monkeypatch.undo()
    root = run_copy / "checkpoints"
    assert names(run_copy) == ["000000020", "000000030"] and not [p for p in root.iterdir() if ".tmp-" in p.name]
    assert find_latest(root).name == "000000030" and load_state(find_latest(root))["step"] == 30
    assert train(run_copy, "run.steps=40").step == 40  # space freed: the same command resumes


def test_read_only_checkpoint_folder(run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_mkdir = Path.mkdir

    def read_only(self: Path, *args, **kwargs) -> None:  # what a read-only mount answers (even to root)
        if self.name.startswith(".tmp-"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(CheckpointError, match=r"checkpoint of step 40 .*Read-only file system"):
        train(run_copy, "run.steps=40")
    monkeypatch.undo()
    assert names(run_copy) == ["000000020", "000000030"] and load_state(find_latest(run_copy / "checkpoints"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_checkpoint_folder_by_permissions(run_copy: Path) -> None:
    root = run_copy / "checkpoints"
    root.chmod(0o555)
    try:
        with pytest.raises(CheckpointError, match=r"checkpoint of step 40 .*Permission denied"):
            train(run_copy, "run.steps=40")
    finally:
        root.chmod(0o755)
    assert names(run_copy) == ["000000020", "000000030"] and load_state(find_latest(root))


def test_too_little_free_space_stops_before_training(tmp_path: Path) -> None:
    with pytest.raises(DiffRatioError, match=r"GiB free on the disk of .* at least 1000000000.0 GiB is required "
                                             r"\(run\.min_free_disk_gb\)"):
        train(tmp_path / "run", "run.min_free_disk_gb=1e9")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unwritable_run_directory_stops_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DiffRatioError, match=r"cannot create the run directory .*file/run"):
        train(tmp_path / "file" / "run")
    real_write_text = Path.write_text

    def refuse_probe(self: Path, *args, **kwargs) -> int:
        if self.name.startswith(".write-test-"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", refuse_probe)
    with pytest.raises(DiffRatioError, match=r"run directory .*/ro is not writable: .*Permission denied"):
        train(tmp_path / "ro")
    assert not (tmp_path / "ro" / "checkpoints").exists()


# --------------------------------------------------------------------------------------------------
# 3. non-finite losses and gradients
# --------------------------------------------------------------------------------------------------


def test_trainable_skips_a_nonfinite_update_on_the_device() -> None:
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    t = LocalTrainable(net, OptimizerConfig(lr=0.1, betas=(0.9, 0.99), grad_clip=1.0))
    ema = make_ema(net)
    x = torch.randn(8, 3)

    def snapshot() -> list[torch.Tensor]:
        state = [s.clone() for st in t.optimizer.state.values() for s in st.values()]
        return [p.detach().clone() for p in net.parameters()] + state + [p.clone() for p in ema.parameters()]

    def step(loss: torch.Tensor) -> dict[str, torch.Tensor]:
        t.backward(loss)
        out = t.step()
        if t.last_step_ok:
            update_ema(ema, net, 0.9, 5)
        return out

    assert bool(step(net(x).square().mean())["grad_norm"] > 0) and bool(t.last_step_ok)
    before = snapshot()
    out = step(net(x).square().mean() * math.nan)  # non-finite loss
    assert not bool(t.last_step_ok) and math.isnan(float(out["grad_norm"]))
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(), strict=True))
    assert all(p.grad is None for p in net.parameters())

    loss = net(x).square().mean()  # finite loss, one infinite gradient
    loss.backward()
    net.weight.grad[0, 0] = math.inf
    out = t.step()
    assert not bool(t.last_step_ok) and math.isinf(float(out["grad_norm"]))
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(), strict=True))

    step(net(x).square().mean())  # training goes on
    assert bool(t.last_step_ok) and not torch.equal(before[0], net.weight.detach())
    assert all_finite(t.state_dict())


def test_nonfinite_steps_are_skipped_counted_and_keep_out_of_checkpoints(tmp_path: Path) -> None:
    probe = Probe()
    run = train(tmp_path / "run", "divergence.name=nan-after", "divergence.good_steps=22", "divergence.bad_steps=5",
                "run.steps=40", "run.keep_checkpoints=9", registry=registry_with(probe))
    assert run.step == 40
    # after 5 warm-up loop steps, generator updates 23..27 (loop steps 28..32) were skipped; the checkpoint of
    # step 30 waited for the first good step, 33
    assert names(tmp_path / "run") == ["000000010", "000000020", "000000033", "000000040"]
    skipped = {step: values["nonfinite/skipped_steps"] for step, values in probe.logged.items()}
    assert skipped == {10: 0, 20: 0, 30: 3, 40: 5}
    assert all(math.isfinite(v) for values in probe.logged.values() for v in values.values())  # finite means
    state = load_state(find_latest(tmp_path / "run" / "checkpoints"))
    assert state["nonfinite"]["skipped_steps"] == 5 and state["nonfinite"]["streak"] == 0 and all_finite(state)


def test_divergence_stops_the_run_naming_loss_and_step(tmp_path: Path) -> None:
    with pytest.raises(Diverged) as err:
        train(tmp_path / "run", "divergence.name=nan-after", "divergence.good_steps=20", "run.max_nonfinite_steps=8",
              "run.steps=60")
    msg = str(err.value)  # 5 warm-up loop steps, then generator update 21 (loop step 26) is the first bad one
    assert "8 steps in a row had non-finite losses or gradients (run.max_nonfinite_steps = 8)" in msg
    assert "from loss/generator = nan, generator/grad_norm = nan at step 26 to step 33" in msg
    assert "the last checkpoint" in msg and "(step 20), is from before the divergence" in msg
    # step 30 fell inside the streak: nothing was written after the divergence began
    assert names(tmp_path / "run") == ["000000010", "000000020"]
    state = load_state(find_latest(tmp_path / "run" / "checkpoints"))
    assert state["step"] == 20 and all_finite(state["method"])


# --------------------------------------------------------------------------------------------------
# 5-7. changed recipes, bad 2-D data, failing plugin hooks
# --------------------------------------------------------------------------------------------------


def test_harmless_changes_on_resume_are_logged(run_copy: Path, capsys) -> None:
    train(run_copy, "run.steps=40", "run.log_every=20")
    out = capsys.readouterr().out
    assert ("resuming with changed settings that keep the checkpoint's meaning: run.log_every: 10 -> 20; "
            "run.steps: 30 -> 40") in out


def test_nonfinite_2d_data_is_refused_before_training(tmp_path: Path) -> None:
    pts = np.random.default_rng(0).normal(size=(50, 2))
    pts[7, 1] = np.nan
    np.savez(tmp_path / "pts.npz", x=pts)
    with pytest.raises(DataError, match=r"pts\.npz\['x'\]\): row 7 is not finite"):
        NpzPoints(NpzPoints.Config(path=str(tmp_path / "pts.npz")))


class RaisingHook:
    @hookimpl
    def diffratio_on_step_end(self, run: Run, step: int, scalars: dict[str, float]) -> None:
        raise RuntimeError("hook broken on purpose")


def test_plugin_raising_in_a_lifecycle_hook_is_named_and_the_run_goes_on(tmp_path: Path) -> None:
    reg = registry_with(RaisingHook(), "hookraiser")
    with pytest.warns(UserWarning, match=r"plugin 'hookraiser' \(package pkg-hookraiser\) raised in "
                                         r"diffratio_on_step_end: RuntimeError: hook broken on purpose"):
        run = train(tmp_path / "run", registry=reg)
    assert run.step == 30 and names(tmp_path / "run")[-1] == "000000030"
