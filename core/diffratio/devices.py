"""The device rule every command shares: what ``"auto"``, ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` mean."""

from __future__ import annotations

import torch

from diffratio.errors import DiffRatioError


def resolve_device(name: str | torch.device, local_rank: int | None = None) -> torch.device:
    """The ``torch.device`` that ``name`` asks for.

    ``"auto"`` is the GPU when one is visible, else the CPU. A CUDA device without an index is the GPU of
    ``local_rank`` (one process per GPU, as ``torchrun`` sets ``LOCAL_RANK``) or, without one, the current
    GPU. Asking for CUDA where no GPU is visible, or for a GPU that does not exist, is an error, never a
    silent fallback to the CPU.
    """
    text = str(name)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except RuntimeError as exc:
        raise DiffRatioError(f"unknown device {text!r}: use \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"") from exc
    if dev.type != "cuda":
        return dev
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DiffRatioError(f"device {text!r} asked for but no CUDA GPU is visible; use \"cpu\" or \"auto\"")
    if dev.index is None:
        dev = torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
    if dev.index >= count:
        where = f"this process has LOCAL_RANK {local_rank}" if local_rank is not None else f"device {text!r}"
        raise DiffRatioError(f"{where} but only {count} GPU(s) are visible: launch at most {count} processes per "
                             f"node (torchrun --nproc_per_node {count}) or pick an index below {count}")
    return dev


__all__ = ["resolve_device"]
