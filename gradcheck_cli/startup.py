"""The `gradcheck` command's start: Python's cyclic garbage collector is paused while gradcheck, Typer and
torch are imported; then everything imported so far is frozen (gc.freeze: moved out of the collector's
reach) and the collector is enabled again, before any of the user's code runs.

Importing torch creates about a million objects that live as long as the process. The collector scans
them again and again while they are being created, and once more at exit, and finds nothing to free:
on the 2-core benchmark machine that is ~0.6-0.8 s of CPU in a bare `python -c "import torch"` (about
3.0 s -> 2.2 s), a fifth of a small model's whole check. Only the command does this (the console script
and `python -m gradcheck_cli`); a process that imports gradcheck_cli as a library keeps its collector as
it is. The user's model file, batches and passes run with the collector in its usual state (the passes
pause it themselves: measure.passes.measuring).
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """Pause the collector for the imports (only when it is running)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """After the heavy imports: freeze what they created and restart the collector. Idempotent; does
    nothing unless pause() paused it (library use)."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()


def main() -> None:
    """The console script `gradcheck` and `python -m gradcheck_cli`."""
    pause()
    from gradcheck_cli.cli import main as cli_main

    cli_main()
