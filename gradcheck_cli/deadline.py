"""--timeout: stop a run whose import, build, forward, loss or backward never returns.

Two layers:
- a SIGALRM timer (Unix, main thread) raises `RunTimeout` inside whatever Python code is running, so the
  run unwinds normally: the model is restored, the phase and the module are named, exit 3;
- a watchdog thread ends the process with exit 3 a grace period later, for code stuck where Python
  cannot interrupt it (a native call that never returns).
The current phase is kept here so both can say what timed out.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

GRACE_S = 10.0

_phase = "load"


class RunTimeout(Exception):
    """Raised inside the user's code when --timeout expires."""

    def __init__(self, seconds: float, phase: str):
        super().__init__(f"did not finish within --timeout {seconds:g} s")
        self.seconds = seconds
        self.phase = phase


def set_phase(phase: str) -> None:
    global _phase
    _phase = phase


def phase() -> str:
    return _phase


class Deadline:
    """Context manager; `seconds=None` (the default in the terminal) does nothing."""

    def __init__(self, seconds: float | None, on_hard_stop: Any = None):
        self.seconds = seconds
        self.on_hard_stop = on_hard_stop
        self._old_handler: Any = None
        self._timer: threading.Timer | None = None
        self._armed = False

    def __enter__(self) -> "Deadline":
        if not self.seconds:
            return self
        if hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread():
            self._old_handler = signal.signal(signal.SIGALRM, self._raise)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
            self._armed = True
        self._timer = threading.Timer(self.seconds + GRACE_S, self._hard_stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old_handler)
            self._armed = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _raise(self, signum: int, frame: Any) -> None:
        raise RunTimeout(self.seconds or 0.0, _phase)

    def _hard_stop(self) -> None:
        msg = (f"error: {_phase} failed: did not finish within --timeout {self.seconds:g} s and could not be "
               f"interrupted (stuck in native code); stopped the process")
        if self.on_hard_stop is not None:
            try:
                self.on_hard_stop(_phase, msg)
            except Exception:   # pragma: no cover - best effort before a hard exit
                pass
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()
        os._exit(3)
