"""Atomic, verified checkpoints (``checkpoints/<step>/``), the commit protocol of a run's ranks, and resume.

A checkpoint is written into a temporary folder, flushed to disk, given a ``meta.json`` with the SHA-256 of
every file, and renamed into place: the rename is the commit. ``latest`` then names it, for people and other
tools; resume does not trust it and takes the newest intact, readable checkpoint. A crash at any moment
leaves the previous checkpoint intact; a killed write's temporary folder is removed at the next start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffratio.errors import CheckpointError, DiffRatioError
from diffratio.ranks import agree

if TYPE_CHECKING:
    from diffratio.components import Strategy
    from diffratio.run import Run

STATE_FILE = "state.pt"
META_FILE = "meta.json"
LATEST = "latest"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
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


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename; the temporary file never stays behind."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def write_json(path: Path, obj: Any) -> None:
    """``write_atomic`` of ``obj`` as JSON; any failure is a ``CheckpointError`` naming the file and the reason."""
    try:
        write_atomic(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())
    except Exception as exc:
        raise CheckpointError(f"could not write {path}: {_reason(exc)}. Free disk space or fix permissions, then "
                              "re-run the same command.") from exc


def step_dir_name(step: int) -> str:
    return f"{step:09d}"


def temp_folder(ckpt_root: str | Path, step: int, token: int) -> Path:
    """The temporary folder a checkpoint of ``step`` is written into (``token``: the main rank's process id)."""
    return Path(ckpt_root) / f".tmp-{step_dir_name(step)}-{token}"


def begin_checkpoint(tmp: Path) -> None:
    """Create the (empty) temporary folder of a checkpoint."""
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()


def write_files(tmp: Path, files: Mapping[str, Any]) -> None:
    """``torch.save`` each object into ``tmp/<name>``, flushed to disk."""
    for name, obj in files.items():
        with open(tmp / name, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())


def commit_checkpoint(ckpt_root: str | Path, step: int, tmp: Path, *, keep: int = 2) -> Path:
    """Checksum every file under ``tmp`` into ``meta.json``, rename ``tmp`` to the step's folder (the commit),
    point ``latest`` at it and prune old checkpoints; returns the folder."""
    root = Path(ckpt_root)
    final = root / step_dir_name(step)
    paths = sorted(tmp.rglob("*"), reverse=True)  # deepest first: files, then the folders holding them
    for f in paths:
        _fsync(f)  # what other writers (DeepSpeed, every rank) wrote without fsync reaches the disk
    names = sorted(str(f.relative_to(tmp)) for f in paths if f.is_file())
    meta = {"step": step, "files": {name: _sha256(tmp / name) for name in names}}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    _fsync(tmp)
    if final.exists():  # re-saving the same step (e.g. after a resume that did no step)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    write_atomic(root / LATEST, step_dir_name(step).encode())
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_error(ckpt_root: str | Path, step: int, tmp: Path, exc: BaseException) -> CheckpointError:
    """Remove the temporary folder of a failed write; the error to raise, naming step, folder and cause."""
    shutil.rmtree(tmp, ignore_errors=True)
    return CheckpointError(f"could not write the checkpoint of step {step} into {tmp.parent}: {_reason(exc)}. "
                           "Earlier checkpoints are untouched; free disk space or fix permissions, then re-run the "
                           "same command to resume.")


def remove_partial_writes(ckpt_root: str | Path) -> list[Path]:
    """Delete what a killed writer left behind (``.tmp-*`` folders, ``.*.tmp-*`` files); return their paths.
    Call it only while holding the run directory's lock."""
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
    """Committed checkpoint folders (named by a step number, not empty; damaged ones included), oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and any(p.iterdir()))


def foreign_entries(ckpt_root: str | Path) -> list[Path]:
    """What under ``checkpoints/`` is neither a committed checkpoint, ``latest`` nor a partial write."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    ours = set(list_checkpoints(root))
    return sorted(p for p in root.iterdir()
                  if p not in ours and p.name != LATEST and not (p.name.startswith(".") and ".tmp-" in p.name))


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
    """The newest checkpoint that verifies (``latest`` is not trusted); damaged ones are reported and skipped."""
    for path in reversed(list_checkpoints(ckpt_root)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        warnings.warn(f"skipping damaged checkpoint {path}: {problem}; falling back to an older one", stacklevel=2)
    return None


def load_state(path: str | Path, name: str = STATE_FILE, map_location: Any = "cpu", *, verify: bool = True) -> Any:
    """Load one file of a verified checkpoint folder (or a plain ``.pt`` file); ``verify=False`` skips
    the checksums (of a folder that was just verified)."""
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
        raise CheckpointError(f"checkpoint file {p} could not be read: {_reason(exc)}") from exc


def newest_readable(ckpt_root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest committed checkpoint that verifies and loads as a run's state, with that state; each one
    passed over is reported with its reason. Raises when checkpoints exist but none can be used."""
    found = list_checkpoints(ckpt_root)
    for path in reversed(found):
        problem = verify_checkpoint(path)
        if problem is None:
            try:
                state = load_state(path, verify=False)
                if not isinstance(state, dict) or not {"step", "method"} <= state.keys():
                    raise CheckpointError(f"{path / STATE_FILE} holds no run state (no 'step' and 'method')")
                return path, state
            except CheckpointError as exc:
                problem = str(exc)
        warnings.warn(f"skipping damaged checkpoint {path}: {problem}; falling back to an older one", stacklevel=2)
    if found:
        raise CheckpointError(f"every checkpoint under {ckpt_root} is damaged (see the warnings above); nothing "
                              "to resume from. Move the run directory away (or delete its checkpoints) to start "
                              "afresh.")
    return None


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore ``rng_state``'s states (CPU byte tensors, wherever the checkpoint was mapped to)."""
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def save(run: Run) -> Path:
    """Write the checkpoint of ``run.step``; every rank calls it at the same step.

    Three phases, agreed between the ranks after each: the main rank creates the temporary folder; every rank
    adds the strategy's own files (DeepSpeed) and the main rank ``state.pt`` (with every rank's data sampler
    and RNG states and the resolved config); the main rank commits. A failure anywhere, of any kind, stops
    every rank with ``CheckpointError`` and leaves no temporary file.
    """
    strategy, main = run.ctx.strategy, run.ctx.strategy.is_main
    root = run.run_dir / "checkpoints"
    own = {"data": run.ctx.sampler.state_dict(), "rng": rng_state(strategy.device)}
    ranks = strategy.gather_object(own)
    tmp = temp_folder(root, run.step, strategy.broadcast_object(os.getpid()))
    state = {"step": run.step, "train_seconds": run.train_seconds, "method": run.method.state_dict(), **own,
             "nonfinite": run.guard.state_dict(), "world_size": strategy.world_size,
             "config": run.ctx.recipe.to_dict()}
    if strategy.world_size > 1:
        state["ranks"] = ranks

    def write() -> None:
        strategy.save_files(tmp)
        if main:
            write_files(tmp, {STATE_FILE: state})

    try:
        for phase in (lambda: begin_checkpoint(tmp) if main else None, write,
                      lambda: commit_checkpoint(root, run.step, tmp, keep=run.ctx.settings.keep_checkpoints)
                      if main else None):
            _, error, failed = agree(strategy, phase)
            if failed:
                raise write_error(root, run.step, tmp, error or OSError(
                    "another rank could not write its part (see its error)"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a commit; left only by a failure
    return root / step_dir_name(run.step)


def resume(run: Run, path: Path, state: Mapping[str, Any] | None = None) -> None:
    """Bring every stateful object of ``run`` back from checkpoint ``path`` (``state``: its state.pt, when the
    caller has read it already)."""
    strategy, s = run.ctx.strategy, run.ctx.settings
    if state is None:
        state = load_state(path, map_location="cpu", verify=False)
    saved = int(state.get("world_size", 1))
    if saved != strategy.world_size and not strategy.resizable:
        raise DiffRatioError(f"{path} was written by {saved} processes; strategy "
                             f"{run.ctx.recipe.components['strategy'].name!r} shards its state per process and "
                             f"cannot resume it with {strategy.world_size}. Launch {saved} processes.")
    run.method.load_state_dict(state["method"])
    strategy.load_files(path)
    own = _rank_state(state, strategy)
    if own is not None:
        run.ctx.sampler.load_state_dict(own["data"])
        set_rng_state(own["rng"], strategy.device)
    else:  # a rank the checkpoint did not have: fresh streams, distinct from every earlier one
        torch.manual_seed(s.seed * 7919 + strategy.rank + 104_729 * int(state["step"]))
        run.ctx.sampler.gen.manual_seed(s.seed * 1000 + strategy.rank + 1 + 104_729 * int(state["step"]))
    if saved != strategy.world_size and strategy.is_main:
        print(f"resuming a checkpoint of {saved} processes with {strategy.world_size}: the models and optimisers "
              "continue; ranks without a counterpart draw data and noise from new seeds", flush=True)
    run.guard.load_state_dict(state.get("nonfinite", {}))
    run.step, run.train_seconds = int(state["step"]), float(state.get("train_seconds", 0.0))


def _rank_state(state: Mapping[str, Any], strategy: Strategy) -> Mapping[str, Any] | None:
    """This rank's data sampler and RNG states in a checkpoint, or None when it was written by another
    number of processes and this rank had no counterpart (rank 0 always has one)."""
    saved = int(state.get("world_size", 1))
    if saved == strategy.world_size:
        return state["ranks"][strategy.rank] if saved > 1 else state
    if "ranks" in state and strategy.rank < saved:
        return state["ranks"][strategy.rank]
    return state if strategy.rank == 0 else None


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
