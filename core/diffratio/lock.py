"""An exclusive lock on a run directory, held by the main rank for the whole run.

``fcntl.flock`` on ``RUN_DIR/run.lock``: the kernel releases it when its holder dies, however it dies, so
a lock file whose lock is free belongs to a dead process (stale) and is taken over. The holder writes its
host, process id and start time into the file, for the message another process gets. The other ranks of
a run trust the main rank's lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from diffratio.errors import DiffRatioError

LOCK_FILE = "run.lock"


class RunDirectoryBusy(DiffRatioError):
    """Another live process holds the run directory."""


def _describe(info: str) -> str:
    try:
        d = json.loads(info)
        return f"host {d['host']}, pid {d['pid']}, started {d['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that left no details"


class RunLock:
    """``with RunLock(run_dir):`` holds the directory; a second holder is refused at once."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(os.pread(fd, 4096, 0).decode(errors="replace"))
                os.close(fd)
                raise RunDirectoryBusy(
                    f"run directory {self.path.parent} is in use by another run ({holder}); wait for it to "
                    "finish, stop it, or choose another --run-dir (or run.name).") from None
            try:  # the file may have been unlinked by the holder that just released it: lock the one in place
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if previous:
            print(f"taking over the lock of {self.path.parent}: its holder ({_describe(previous)}) is no longer "
                  "running", file=sys.stderr, flush=True)
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing releases the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
