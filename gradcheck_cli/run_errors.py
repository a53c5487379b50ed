"""A run that fails: the one-line `error: ...` on stderr and its exit code, the error report still written to
the --output files (for CI to read), and under torchrun a rank's own failure and which rank speaks."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from gradcheck_cli.errors import EXIT_INTERNAL, GradcheckError, exc_line

err = Console(stderr=True, highlight=False, soft_wrap=True)

_state: dict = {"rank": 0}


def set_rank(rank: int) -> None:
    _state["rank"] = rank


def main_rank() -> bool:
    """Under torchrun only rank 0 prints reports and errors that every rank agrees on."""
    return _state["rank"] == 0


def say(line: str) -> None:
    """One line on stderr; user text in it (paths, exception messages) made printable first."""
    from gradcheck_cli.report.escape import terminal

    err.print(terminal(line), markup=False)


def print_traceback(exc: BaseException) -> None:
    """--verbose: the traceback of `exc` on stderr."""
    import traceback

    err.print("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), markup=False)


def fail(exc: GradcheckError, verbose: bool) -> None:
    """End the run with `exc`'s one-line error (after its cause's traceback with --verbose) and exit code."""
    if not main_rank():
        raise typer.Exit(exc.exit_code)
    if verbose and exc.__cause__ is not None:
        print_traceback(exc.__cause__)
    say(f"error: {exc.one_line()}")
    raise typer.Exit(exc.exit_code)


def phase_now(started: bool) -> str:
    if not started:
        return "options"
    from gradcheck_cli.deadline import phase

    return phase()


def error_info(exc: GradcheckError, started: bool) -> dict:
    """The error as the reports record it (type, phase, message, where, hint, exit code)."""
    from gradcheck_cli.errors import UserCodeError

    user = isinstance(exc, UserCodeError)
    return {"type": "user-code" if user else "input",
            "phase": exc.phase if user else ("config" if type(exc).__name__ == "ConfigError" else phase_now(started)),
            "message": exc.message, "where": getattr(exc, "where", None), "hint": exc.hint,
            "exit_code": exc.exit_code}


def internal_error_info(exc: BaseException) -> dict:
    """A bug in gradcheck itself (an exception that is not a GradcheckError), as the reports record it."""
    return {"type": "internal", "phase": phase_now(True), "message": exc_line(exc), "where": None,
            "hint": "re-run with --verbose and report it", "exit_code": EXIT_INTERNAL}


def write_error(target: dict, model: str | None, error: dict) -> None:
    """With --output, a failed run still writes its reports (with the error) for CI to read."""
    if not target.get("outputs") or not main_rank():
        return
    from gradcheck_cli.output_paths import STDOUT, check_output_path
    from gradcheck_cli.report import write_error_file

    for fmt, path in target["outputs"]:
        try:
            if str(path) == STDOUT:
                from gradcheck_cli.findings import ModelError, Suite
                from gradcheck_cli.report import render

                render(Suite(reports=[], errors=[ModelError(model, error)], fail_on=target["fail_on"]), fmt,
                       sys.stdout, color=False)
                sys.stdout.flush()
                continue
            check_output_path(path)
            write_error_file(error, model, fmt, path, fail_on=target["fail_on"])
        except (GradcheckError, OSError):
            continue   # the output path itself is the problem: the error line says so


def rank_failed(exc: BaseException, target: dict, model: str | None) -> None:
    """Under torchrun, an error the ranks did not agree on (one raised inside the passes, where the other
    ranks may be waiting in a collective) ends this rank now with exit 3; the others follow with 3.
    This rank prints its error (rank 0 also writes it to the --output files); a rank that only lost its
    peers prints nothing."""
    from gradcheck_cli import distributed

    ctx = distributed.current()
    if ctx is None or getattr(exc, "agreed", False):
        return
    if isinstance(exc, GradcheckError):
        info, line = error_info(exc, True), exc.one_line()
    else:
        info = internal_error_info(exc)
        line = f"internal error in gradcheck: {exc_line(exc)}"
    # torchrun's SIGTERM (sent when it sees another rank end) must not cut this rank's report short: its
    # handler writing the same report in the middle of this write left no report at all.
    distributed.ending()
    message = ""   # a rank that only lost its peers prints nothing
    try:
        if distributed.peer_lost(exc):
            info.update(message=f"rank {ctx.rank}: another rank ended during the {info['phase']} phase",
                        exit_code=3)
        else:
            info.update(message=f"rank {ctx.rank}: {info['message']}", exit_code=3)
            message = f"error: rank {ctx.rank}: {line}"
        write_error(target, model, info)
    finally:   # whatever writing the report raised, this rank ends now with exit 3
        distributed.fatal(exc, ctx, message, 3)
