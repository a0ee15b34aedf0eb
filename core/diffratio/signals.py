"""SIGINT and SIGTERM from process start to exit: never a traceback, always a clean stop.

While a run trains, a first signal is a request: the loop finishes its step, writes a checkpoint and
stops (``Interrupted``). Anywhere else (start-up, the final evaluation) a first signal raises
``StopRequested`` at once, which the engine turns into a clean stop. A second signal, whenever it comes,
ends the process at once with a one-line message and exit status 128 + the signal number; what it
interrupts is safe to drop, since checkpoints are committed atomically and a killed write is cleaned up
at the next start.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(BaseException):
    """A first SIGINT/SIGTERM outside the training loop. A ``BaseException``, like ``KeyboardInterrupt``,
    so that no ``except Exception`` on the way (a plugin loader, a metric) swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


class Signals:
    """The process's stop requests. ``deferred``: record the first signal for the loop to act on at the end
    of a step; otherwise raise ``StopRequested`` where the process is."""

    def __init__(self) -> None:
        self.received = 0  # the first signal's number; 0 while none came
        self.deferred = False

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received:
            print(f"\n{name} received again: stopping at once (the last committed checkpoint is kept)",
                  file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.received = signum
        if not self.deferred:
            raise StopRequested(signum)
        print(f"\n{name} received: finishing the step and writing a checkpoint (send it again to stop at once)",
              file=sys.stderr, flush=True)

    @contextmanager
    def deferring(self) -> Iterator[None]:
        """While inside, a first signal is recorded (``received``) instead of raised."""
        before, self.deferred = self.deferred, True
        try:
            yield
        finally:
            self.deferred = before
        if self.received and not before:
            raise StopRequested(self.received)


_active: Signals | None = None


@contextmanager
def handled_signals() -> Iterator[Signals]:
    """Install the handlers for the duration (reusing those of an outer caller); outside the main thread,
    where Python allows no handlers, the returned object only ever reports no signal."""
    global _active
    if _active is not None:
        yield _active
        return
    active = Signals()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, active.handle) for s in SIGNALS}
    _active = active
    try:
        yield active
    finally:
        _active = None
        for s, h in previous.items():
            signal.signal(s, h)


def is_real_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the user (a signal) rather than from code that raised it: a
    ``StopRequested``, or a ``KeyboardInterrupt`` while Python's own SIGINT handler is installed (with ours
    installed, a real Ctrl-C arrives as ``StopRequested``)."""
    if isinstance(exc, StopRequested):
        return True
    return isinstance(exc, KeyboardInterrupt) and signal.getsignal(signal.SIGINT) is signal.default_int_handler
