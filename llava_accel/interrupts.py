"""Ctrl-C that never loses a measurement: held while what was measured is built and written, let through where
stopping at once is what the user wants (a batch being timed, the FLOP pass).

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be, so a Ctrl-C in the second after the last
timed batch (the FLOP pass, building the result, writing it) would otherwise throw the whole run away.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator


class HeldInterrupts:
    """Inside ``with HeldInterrupts() as held``, SIGINT is counted in ``held.count`` instead of raised; inside
    ``held.released()`` it raises ``KeyboardInterrupt`` as usual. Outside the main thread (where Python runs no
    signal handler) and where SIGINT is ignored (a background job), it changes nothing."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: Any = None
        self._active = False

    def __enter__(self) -> "HeldInterrupts":
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous not in (signal.SIG_IGN, None):  # None: installed outside Python; leave it alone
                self._previous, self._active = previous, True
                signal.signal(signal.SIGINT, self._remember)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._active:
            signal.signal(signal.SIGINT, self._previous)
            self._active = False

    def _remember(self, signum: int, frame: Any) -> None:
        self.count += 1

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """A block that Ctrl-C interrupts at once (with the handler that was there before)."""
        if not self._active:
            yield
            return
        signal.signal(signal.SIGINT, self._previous)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, self._remember)
