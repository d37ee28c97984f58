"""Stop signals: Ctrl-C (SIGINT) and SIGTERM (preemption, a launcher's stop). Before training starts
a signal stops the command at once, since nothing has been written; once training has started,
the first one asks the loop to save a checkpoint and stop after the current iteration, and a
second one aborts at once."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from resexp.errors import Aborted


class StopSignals:
    """SIGINT and SIGTERM. Before training starts a signal stops the run at once: nothing has been
    written. Once `started` is set, the first one becomes a flag the loop reads between
    iterations, so that the run saves a checkpoint and exits; a second one (not its echo) aborts
    at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    # A launcher between the terminal and the run (torchrun, submitit's local controller) forwards
    # the Ctrl-C that the terminal also delivered: the same request arrives twice, milliseconds
    # apart. A second signal within this many seconds of the first is that echo, not a second request.
    ECHO = 0.5

    def __init__(self, second_aborts: bool = True) -> None:
        self.received: int | None = None
        self.first_at = 0.0
        self.started = False
        self.previous: dict[int, Any] = {}
        # Under torchrun a second signal never aborts: torchrun's own SIGKILL, after its grace
        # period, is the abort, and a process that aborted alone would leave the others waiting.
        self.second_aborts = second_aborts

    def handle(self, signum: int, frame: Any) -> None:
        if not self.started:
            raise Aborted(signum, started=False)
        if self.received is None:
            self.received, self.first_at = signum, time.monotonic()
        elif self.second_aborts and time.monotonic() - self.first_at > self.ECHO:
            raise Aborted(signum, started=True)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
