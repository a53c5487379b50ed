"""The training rehearsal's progress bar: Rich, on stderr, shown only once a run has taken about a
second (short runs print nothing) and only on a terminal (CI logs stay clean)."""

from __future__ import annotations

import time
from typing import Any

SHOW_AFTER_S = 1.0


class TrainProgress:
    """A callable(step, total) for measure.training.rehearse; close() removes the bar."""

    def __init__(self, console: Any, show_after: float = SHOW_AFTER_S, label: str = "training rehearsal") -> None:
        self.console = console
        self.show_after = show_after
        self.label = label
        self.start = time.perf_counter()
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, step: int, total: int) -> None:
        if self.bar is None:
            if time.perf_counter() - self.start < self.show_after or not self.console.is_terminal:
                return
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=total)
        self.bar.update(self.task, completed=step, total=total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
