"""Atomic, verified checkpoints: ``checkpoints/<step>/`` plus a ``latest`` pointer.

A checkpoint is written into a temporary folder, flushed to disk, given a ``meta.json`` with the
SHA-256 of every file, and only then renamed into place; ``latest`` is replaced atomically last. A
crash at any moment leaves the previous checkpoint intact. On load the checksums are verified; a
damaged checkpoint is reported and the next older good one is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from diffratio.errors import CheckpointError

STATE_FILE = "state.pt"
META_FILE = "meta.json"
LATEST = "latest"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    """fsync a folder (its entries) or a file (its data), ignoring what the file system refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def step_dir_name(step: int) -> str:
    return f"{step:09d}"


def save_checkpoint(ckpt_root: str | Path, step: int, state: dict[str, Any], *, keep: int = 2,
                    extra_files: dict[str, Any] | None = None) -> Path:
    """Write ``state`` (anything ``torch.save`` takes) as the checkpoint of ``step``; returns its folder.

    ``extra_files`` maps more file names to objects saved beside ``state.pt`` (covered by the checksum).
    Keeps the ``keep`` newest checkpoints and deletes older ones after the new one is committed.
    One process; ``begin_checkpoint``, ``write_files`` and ``commit_checkpoint`` are its steps, for
    writers where several processes add files to the temporary folder (DeepSpeed).
    """
    root = Path(ckpt_root)
    tmp = temp_folder(root, step, os.getpid())
    try:
        begin_checkpoint(tmp)
        write_files(tmp, {STATE_FILE: state, **(extra_files or {})})
        return commit_checkpoint(root, step, tmp, keep=keep)
    except OSError as exc:
        raise write_error(root, step, tmp, exc) from exc


def temp_folder(ckpt_root: str | Path, step: int, token: int) -> Path:
    """The temporary folder a checkpoint of ``step`` is written into (``token``: the writer's process id)."""
    return Path(ckpt_root) / f".tmp-{step_dir_name(step)}-{token}"


def begin_checkpoint(tmp: Path) -> None:
    """Create the (empty) temporary folder of a checkpoint; raises ``OSError``."""
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()


def write_files(tmp: Path, files: dict[str, Any]) -> None:
    """``torch.save`` each object into ``tmp/<name>``, flushed to disk; raises ``OSError``."""
    for name, obj in files.items():
        with open(tmp / name, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())


def commit_checkpoint(ckpt_root: str | Path, step: int, tmp: Path, *, keep: int = 2) -> Path:
    """Checksum every file under ``tmp`` into ``meta.json``, rename ``tmp`` to the step's folder, point
    ``latest`` at it and prune old checkpoints; returns the folder. Raises ``OSError``."""
    root = Path(ckpt_root)
    final = root / step_dir_name(step)
    paths = sorted(tmp.rglob("*"), reverse=True)  # deepest first: files, then the folders holding them
    for f in paths:
        _fsync_dir(f)  # what other writers (DeepSpeed, every rank) wrote without fsync reaches the disk
    names = sorted(str(f.relative_to(tmp)) for f in paths if f.is_file())
    meta = {"step": step, "files": {name: _sha256(tmp / name) for name in names}}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. after a resume that did no step)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    write_atomic(root / LATEST, step_dir_name(step).encode())
    _prune(root, keep)
    return final


def write_error(ckpt_root: str | Path, step: int, tmp: Path, exc: BaseException) -> CheckpointError:
    """Remove the temporary folder of a failed write; the error to raise, naming step, folder and cause."""
    shutil.rmtree(tmp, ignore_errors=True)
    return CheckpointError(f"could not write the checkpoint of step {step} under {ckpt_root}: {exc}. "
                           "Earlier checkpoints are untouched; free disk space or fix permissions, "
                           "then re-run the same command to resume.")


def _prune(root: Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def remove_partial_writes(ckpt_root: str | Path) -> list[Path]:
    """Delete what a killed writer left behind (``.tmp-*`` folders, ``.*.tmp-*`` files); return their paths.

    Call it only while no other process writes checkpoints into ``ckpt_root`` (at the start of a run).
    """
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    leftovers = sorted(p for p in root.iterdir() if p.name.startswith(".") and ".tmp-" in p.name)
    for p in leftovers:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return leftovers


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Committed checkpoint folders, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def verify_checkpoint(path: str | Path) -> str | None:
    """Return None if the checkpoint's files match their recorded checksums, else what is wrong."""
    p = Path(path)
    meta_path = p / META_FILE
    if not meta_path.exists():
        return f"{meta_path} is missing"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        return f"{meta_path} is unreadable: {exc}"
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict) or STATE_FILE not in meta["files"]:
        return f"{meta_path} is damaged (it lists no checksum of {STATE_FILE})"
    for name, digest in meta["files"].items():
        f = p / name
        if not f.exists():
            return f"{f} is missing"
        if _sha256(f) != digest:
            return f"{f} is corrupted (checksum mismatch)"
    return None


def find_latest(ckpt_root: str | Path) -> Path | None:
    """The newest checkpoint that verifies; damaged ones are reported (warning) and skipped."""
    root = Path(ckpt_root)
    candidates = list_checkpoints(root)
    try:
        named = root / (root / LATEST).read_text().strip()
    except (OSError, ValueError):  # no pointer, or a damaged one: go by step numbers
        named = None
    if named in candidates:  # newest first: the pointer's target, then the rest by step
        candidates.remove(named)
        candidates.append(named)
    for path in reversed(candidates):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        warnings.warn(f"skipping damaged checkpoint {path}: {problem}; falling back to an older one",
                      stacklevel=2)
    return None


def load_state(path: str | Path, name: str = STATE_FILE, map_location: Any = "cpu", *, verify: bool = True) -> Any:
    """Load one file of a verified checkpoint folder (or a plain ``.pt`` file); ``verify=False`` skips
    the checksums (of a folder that ``find_latest`` has just verified)."""
    p = Path(path)
    if p.is_dir():
        problem = verify_checkpoint(p) if verify else None
        if problem is not None:
            raise CheckpointError(f"checkpoint {p} cannot be used: {problem}")
        p = p / name
    if not p.exists():
        raise CheckpointError(f"checkpoint file {p} does not exist")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint file {p} could not be read: {exc}") from exc


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a run directory, a ``checkpoints`` folder, one checkpoint folder or a ``.pt`` file."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist: give a run directory (runs/NAME), a checkpoint folder "
                              "or a .pt file")
    if p.is_file():
        return p
    for root in (p / "checkpoints", p):
        if list_checkpoints(root):
            found = find_latest(root)
            if found is None:
                raise CheckpointError(f"no intact checkpoint under {root}")
            return found
    if (p / META_FILE).exists():
        return p
    raise CheckpointError(f"{p} holds no checkpoint (expected checkpoints/<step>/ inside a run directory)")


def load_pretrained_denoiser(path: str | Path) -> dict[str, torch.Tensor]:
    """The EMA denoiser weights of a pretraining (``edm``) run, for initialising generators.

    ``path`` is an ``edm`` run directory, one of its checkpoints, or an exported ``.pt`` file holding
    ``{"denoiser": state_dict}``.
    """
    ckpt = resolve_checkpoint(path)
    state = load_state(ckpt)
    method_state = state.get("method", state) if isinstance(state, dict) else {}
    for key in ("denoiser_ema", "denoiser"):
        if key in method_state:
            return method_state[key]
    raise CheckpointError(f"{ckpt} holds no pretrained denoiser (keys: {sorted(method_state)[:8]}); "
                          "initialise from the run directory of an `edm` pretraining recipe")
