"""SIGINT / SIGTERM for long-running commands.

`handle_signals()` turns both signals into an `Interrupted` exception (a
KeyboardInterrupt), so Ctrl-C and `kill` / `docker stop` / a cluster scheduler's
SIGTERM end a command the same clean way. With `defer=True` (the radiance
stage's loop) the first signal only sets a flag that the loop reads at its next
step boundary, where it saves that step; a second signal raises `Interrupted`
at once (abort without saving; an atomic save in progress leaves the previous
checkpoint and at most a `.tmp_*` file, removed at the next start).

Handlers can only be installed in the main thread; elsewhere the context
managers do nothing (the flag never fires and KeyboardInterrupt behaves as usual).
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    """"SIGINT" for signal.SIGINT, etc."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(KeyboardInterrupt):
    """A command stopped by SIGINT or SIGTERM. `exit_code` is 128 + the signal number
    (130 for SIGINT, 143 for SIGTERM), as a shell reports a process the signal ended."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted by {signal_name(signum)}")
        self.signum = signum
        self.exit_code = 128 + int(signum)


class StopRequest:
    """Set by the first SIGINT/SIGTERM inside `handle_signals(defer=True)`."""

    def __init__(self):
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return "" if self.signum is None else signal_name(self.signum)

    @property
    def exit_code(self) -> int:
        return 0 if self.signum is None else 128 + int(self.signum)


@contextmanager
def handle_signals(defer: bool = False, notice: str = "") -> Iterator[StopRequest]:
    """Install SIGINT and SIGTERM handlers for the block; restore the previous ones after.

    Args:
        defer: False: a signal raises `Interrupted` at once. True: the first signal
            sets the yielded `StopRequest` (the block checks `.requested` at a safe
            point) and writes `notice` to stderr; a second raises `Interrupted` at once.
        notice: the line written on the first deferred signal (default: a generic one).
    Yields:
        StopRequest (never set outside the main thread, where handlers cannot be set).
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if defer and stop.signum is None:
            stop.signum = signum
            text = notice or "stopping at the end of the current step"
            # os.write, not print: a handler may run in the middle of a print to stderr
            os.write(2, f"\n{signal_name(signum)}: {text} (send it again to abort at once)\n".encode())
            return
        raise Interrupted(signum)

    previous = {}
    try:
        for s in SIGNALS:
            previous[s] = signal.signal(s, handler)
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
