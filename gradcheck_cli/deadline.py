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


class SecondInterrupt:
    """A second Ctrl-C stops the process at once (exit 130), also while the main thread is stuck in a
    native call, where Python cannot raise KeyboardInterrupt until the call returns.

    The first Ctrl-C works as usual (KeyboardInterrupt, the model is restored, exit 130). Python's C-level
    signal handler writes each signal's number to the wakeup file descriptor as it arrives, whatever the
    main thread is doing; a daemon thread reading it counts the SIGINTs. Main thread, Unix only; a no-op
    elsewhere."""

    def __init__(self) -> None:
        self._old_fd: int | None = None
        self._fds: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._stop = False

    def __enter__(self) -> "SecondInterrupt":
        if os.name != "posix" or threading.current_thread() is not threading.main_thread():
            return self
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return self   # someone else handles Ctrl-C
        r, w = os.pipe()
        os.set_blocking(w, False)
        try:
            self._old_fd = signal.set_wakeup_fd(w)
        except (ValueError, OSError):   # pragma: no cover - not the main thread after all
            os.close(r)
            os.close(w)
            return self
        self._fds = (r, w)
        self._thread = threading.Thread(target=self._watch, args=(r,), daemon=True, name="gradcheck-sigint")
        self._thread.start()
        return self

    def _watch(self, fd: int) -> None:
        seen = 0
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data or self._stop:
                return
            seen += data.count(bytes([signal.SIGINT]))
            if seen >= 2:
                sys.stderr.write(f"error: interrupted twice during {_phase}; stopped at once\n")
                sys.stderr.flush()
                os._exit(130)

    def __exit__(self, *exc: Any) -> None:
        if self._fds is None:
            return
        signal.set_wakeup_fd(self._old_fd if self._old_fd is not None else -1)
        self._stop = True
        r, w = self._fds
        os.close(w)   # the reader sees end of file
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        try:
            os.close(r)
        except OSError:   # pragma: no cover
            pass
        self._fds = None
