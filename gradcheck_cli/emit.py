"""What a run writes: the report files, the report on the screen (stdout carries the report alone, fenced
and annotated in GitHub Actions), and the user's own prints sent to stderr while their code runs."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Iterator

from gradcheck_cli.errors import InputError
from gradcheck_cli.output_paths import STDOUT
from gradcheck_cli.run_errors import main_rank


def emit(suite, settings, outputs: list[tuple[str, Path]], color: bool | None = None) -> None:  # noqa: ANN001
    """Write each --output file, then the report on the screen (the --output - format, else text when
    files were written, else --format)."""
    if not main_rank():   # under torchrun, rank 0 writes the reports
        return
    from gradcheck_cli import report as renderers

    to_stdout = None
    for fmt, path in outputs:
        if str(path) == STDOUT:
            to_stdout = fmt
            continue
        try:
            renderers.write_file(suite, fmt, path, max_rows=settings.max_rows)
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    screen = to_stdout or ("text" if outputs else settings.format)
    github = os.environ.get("GITHUB_ACTIONS") == "true"
    # In a GitHub Actions log, a line of the report that starts with `::` (a layer named so) would be run
    # as a workflow command: stop command processing around the human-readable report.
    fence = f"gradcheck-{os.urandom(8).hex()}" if github and screen in ("text", "markdown") else None
    if fence:
        sys.stdout.write(f"::stop-commands::{fence}\n")
    renderers.render(suite, screen, sys.stdout, max_rows=settings.max_rows, color=color)
    if fence:
        sys.stdout.write(f"::{fence}::\n")
    if github:
        from gradcheck_cli.report.github import annotations

        # Workflow commands are read from stdout and stderr; keep machine formats on stdout clean.
        stream = sys.stdout if screen in ("text", "markdown") else sys.stderr
        for line in annotations(suite):
            stream.write(line + "\n")
        stream.flush()


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """sys.stdout, and file descriptor 1 when it is the real stdout (prints from native code and child
    processes), point to stderr while the user's code runs."""
    sys.stdout.flush()
    saved = None
    try:
        if sys.stdout.fileno() == 1:
            saved = os.dup(1)
            os.dup2(sys.stderr.fileno(), 1)
    except (AttributeError, OSError, ValueError):   # not a real file (a test runner's buffer)
        saved = None
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)
