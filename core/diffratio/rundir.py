"""The run directory at the start of a run (main rank): lock, checks, clean-up, the checkpoint to resume
from, and ``run.json``.

``run.json`` records the resolved config, the recipe, the plugins and versions, and whether the run is
finished. Each checkpoint carries the resolved config too, so a missing or damaged ``run.json`` is rebuilt
from the checkpoint, and a resumed recipe is checked against the checkpoint it continues.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import attrs
import torch

from diffratio import checkpoint as ckpt
from diffratio.errors import CheckpointError, DiffRatioError
from diffratio.lock import LOCK_FILE, RunLock
from diffratio.recipe import Recipe, flatten, meaningful_changes
from diffratio.registry import Registry
from diffratio.run import plugin_versions

RUN_JSON = "run.json"


@attrs.define
class Start:
    """What the main rank found in the run directory (picklable: handed to every rank)."""

    checkpoint: Path | None  # the checkpoint to resume from
    complete: bool  # finished at ``run.steps`` or beyond, final outputs written: nothing to do
    created: bool  # this start created the run directory


def read_run_json(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``run.json`` and None, or None and what is wrong with it (None, None when there is none)."""
    path = run_dir / RUN_JSON
    if not path.exists():
        return None, None
    try:
        info = json.loads(path.read_text())
        if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
            return None, f"{path} holds no resolved config"
        return info, None
    except (OSError, ValueError) as exc:
        return None, f"{path} cannot be read: {type(exc).__name__}: {exc}"


def update_run_json(run_dir: Path, **fields: Any) -> None:
    info, _ = read_run_json(run_dir)
    if info is not None:
        ckpt.write_json(run_dir / RUN_JSON, {**info, **fields})


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> dict[str, str]:
    """Every dotted key whose value differs between two resolved configs, as ``"old -> new"``."""
    a, b = flatten(old), flatten(new)
    return {k: f"{a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "<unset>") != b.get(k, "<unset>")}


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def check_disk(run_dir: Path, min_gb: float) -> None:
    """The run directory is writable and its disk has ``min_gb`` GiB free."""
    probe = run_dir / f".write-test-{os.getpid()}"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise DiffRatioError(f"run directory {run_dir} is not writable: {exc}. Fix its permissions or "
                             "choose another --run-dir.") from exc
    free = shutil.disk_usage(run_dir).free / 2**30
    if free < min_gb:
        raise DiffRatioError(f"only {free:.2f} GiB free on the disk of {run_dir}; at least {min_gb} GiB is "
                             "required (run.min_free_disk_gb). Free space or choose another --run-dir.")


class RunDirectory:
    """The main rank's hold on the run directory: its lock, and the checkpoint state read at the start."""

    def __init__(self, recipe: Recipe, run_dir: Path, registry: Registry) -> None:
        self.recipe, self.run_dir, self.registry = recipe, run_dir, registry
        self.lock = RunLock(run_dir)
        self.state: dict[str, Any] | None = None  # of the checkpoint to resume from
        self.created = False

    def prepare(self) -> Start:
        """Create and lock the directory, check it, clean up a killed write, choose the checkpoint, check the
        recipe against it and write ``run.json`` (unless the run is complete)."""
        try:
            self.created = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DiffRatioError(f"cannot create the run directory {self.run_dir}: {exc}. Choose another "
                                 "--run-dir.") from exc
        self.lock.acquire()
        check_disk(self.run_dir, self.recipe.settings.min_free_disk_gb)
        root = self.run_dir / "checkpoints"
        for leftover in ckpt.remove_partial_writes(root):
            print(f"removed {leftover}: an unfinished checkpoint write of a killed run", file=sys.stderr)
        for foreign in ckpt.foreign_entries(root):
            warnings.warn(f"ignoring {foreign}: not a checkpoint (an empty folder or a foreign name); "
                          "it is never resumed from nor counted in run.keep_checkpoints", stacklevel=2)
        found = ckpt.newest_readable(root)
        path, self.state = found if found is not None else (None, None)
        info = self._checked_run_json()
        complete = (self.state is not None and int(self.state["step"]) >= self.recipe.settings.steps
                    and (info or {}).get("finished") == int(self.state["step"]))
        if not complete:
            self._write_run_json(info, resumed=path is not None)
        return Start(path, complete, self.created)

    def _checked_run_json(self) -> dict[str, Any] | None:
        """The previous ``run.json`` (rebuilt from the checkpoint when missing or damaged) after checking that the
        recipe keeps the checkpoint's meaning."""
        info, problem = read_run_json(self.run_dir)
        if self.state is None:
            if problem:
                warnings.warn(f"{problem}; no checkpoint depends on it, so it is written afresh", stacklevel=3)
            return None
        old = self.state.get("config") or (info or {}).get("config")
        if old is None:
            raise CheckpointError(f"{problem or f'{self.run_dir / RUN_JSON} is missing'}, and the checkpoints "
                                  "carry no config (written by an older diffratio): the recipe cannot be checked "
                                  "against them. Restore run.json, or choose another --run-dir to start afresh.")
        if info is None or problem:
            warnings.warn(f"{problem or f'{self.run_dir / RUN_JSON} is missing'}; rebuilt from the config "
                          "of the checkpoint", stacklevel=3)
            info = {"config": old}
        new = self.recipe.to_dict()
        changes = meaningful_changes(old, new)
        if changes:
            raise DiffRatioError(f"run directory {self.run_dir} holds a checkpoint of a different configuration:\n"
                                 + "\n".join(f"  - {c}" for c in changes)
                                 + "\nUse the original settings to resume, or a new --run-dir (or run.name) to "
                                 "start afresh.")
        harmless = [f"{k}: {v}" for k, v in changed_settings(old, new).items()]
        if harmless:
            print("resuming with changed settings that keep the checkpoint's meaning: " + "; ".join(harmless),
                  flush=True)
        return info

    def _write_run_json(self, prev: dict[str, Any] | None, resumed: bool) -> None:
        r, now = self.recipe, time.strftime("%Y-%m-%dT%H:%M:%S")
        info = {"config": r.to_dict(), "recipe_file": r.source, "recipe_text": r.text, "sets": list(r.sets),
                "plugins": plugin_versions(r, self.registry), "git_revision": git_revision(),
                "torch": torch.__version__, "python": sys.version.split()[0], "argv": sys.argv,
                "started": (prev or {}).get("started", now),
                "resumes": [*(prev or {}).get("resumes", []), now] if resumed else []}
        ckpt.write_json(self.run_dir / RUN_JSON, info)

    def remove_if_unused(self) -> None:
        """After a failed start: remove the run directory this start created when it holds nothing but what
        the start itself wrote (no checkpoint)."""
        ours = {RUN_JSON, LOCK_FILE, "checkpoints", "tensorboard"}
        if (self.created and self.lock.fd is not None and self.run_dir.is_dir()
                and not ckpt.list_checkpoints(self.run_dir / "checkpoints")
                and {p.name for p in self.run_dir.iterdir()} <= ours):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def release(self) -> None:
        self.lock.release()
