"""What long offline jobs (features, statistics, data conversion) share: progress, notices, Ctrl-C.

- ``progress``: a tqdm bar on stderr when it is a terminal, else one line per ``interval`` seconds, so that
  a log file shows the job moving without a line per update.
- ``notify``: a one-line notice on stderr that does not break an active bar (cache written or used).
- ``describe_file``: a path with its size, as the notices name caches.
- ``interruptible``: a command decorator that turns Ctrl-C into a one-line message and exit status 130.
- ``atomic_write``: a file that appears under its name only once complete; an interrupted or failed
  write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

#: seconds between progress lines when stderr is not a terminal
LINE_INTERVAL = 10.0


class Progress:
    """Counts items done out of ``total``; see ``progress``."""

    def __init__(self, total: int, desc: str, unit: str, stream: TextIO, interval: float) -> None:
        self.total, self.desc, self.unit, self.stream, self.interval = total, desc, unit, stream, interval
        self.done = 0
        self._bar: Any = None
        self._start = self._last = time.monotonic()
        if stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, leave=False)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval or self.done >= self.total:
            self._last = now
            pct = 100.0 * self.done / self.total if self.total else 100.0
            print(f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f}%, {now - self._start:.0f} s)",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextlib.contextmanager
def progress(total: int, desc: str, unit: str = "img", enabled: bool = True,
             interval: float = LINE_INTERVAL) -> Iterator[Progress | None]:
    """A ``Progress`` over ``total`` items on stderr, or None when not ``enabled``."""
    if not enabled:
        yield None
        return
    bar = Progress(total, desc, unit, sys.stderr, interval)
    try:
        yield bar
    finally:
        bar.close()


def notify(message: str) -> None:
    """One line on stderr, written around any active progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def describe_file(path: str | Path) -> str:
    """``path (12.3 MiB)`` (KiB below one MiB)."""
    p = Path(path)
    size = p.stat().st_size if p.is_file() else 0
    return f"{p} ({size / 2**20:.1f} MiB)" if size >= 2**20 else f"{p} ({size / 2**10:.1f} KiB)"


@contextlib.contextmanager
def atomic_write(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path in ``path``'s folder, renamed to ``path`` when the block completes; removed if not.

    ``suffix`` is appended to the temporary name for writers that add their own (``np.savez`` adds .npz).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def interruptible(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Ctrl-C inside ``fn`` prints one line (nothing half-written is kept) and exits with status 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            print("\ninterrupted: stopped; files and caches are written only when complete, so none is partial",
                  file=sys.stderr, flush=True)
            sys.exit(130)

    return wrapper


__all__ = ["LINE_INTERVAL", "Progress", "atomic_write", "describe_file", "interruptible", "notify", "progress"]
