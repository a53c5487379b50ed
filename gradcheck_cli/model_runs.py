"""Each model of a run checked into the suite: the pipeline called with the user's prints on stderr, a
second Ctrl-C stopping at once, the progress bars removed however it ends, and its errors handled."""

from __future__ import annotations

import typer

from gradcheck_cli.emit import stdout_to_stderr
from gradcheck_cli.errors import EXIT_INTERNAL, GradcheckError, exc_line
from gradcheck_cli.run_errors import (err, error_info, fail, internal_error_info, main_rank, phase_now,
                                      print_traceback, rank_failed, say, write_error)


def check_one(s, suite, target: dict, verbose: bool, single: bool) -> None:
    """Check one model into `suite`. With one model, an error ends the run (exit 2-4); with several, it is
    recorded for that model, said on stderr, and the other models are still checked."""
    from gradcheck_cli.progress import TrainProgress

    progress = TrainProgress(err)   # the training rehearsal's bar, removed however the check ends
    verifying = TrainProgress(err, label="verifying fixes")
    try:
        _check_one_with(s, suite, target, verbose, single, progress, verifying)
    finally:
        progress.close()
        verifying.close()


def _check_one_with(s, suite, target: dict, verbose: bool, single: bool, progress, verifying=None) -> None:
    from gradcheck_cli import distributed
    from gradcheck_cli.deadline import SecondInterrupt
    from gradcheck_cli.findings import ModelError
    from gradcheck_cli.pipeline import run_check

    target["started"] = True
    ctx = distributed.current()
    if ctx is not None:   # torchrun's SIGTERM after another rank failed: rank 0 still writes the report
        if main_rank() and target.get("outputs"):
            from gradcheck_cli.report import preload

            preload({fmt for fmt, _ in target["outputs"]})   # the handler must not import
        distributed.on_terminated = lambda rank=ctx.rank: write_error(target, s.model, {
            "type": "user-code", "phase": phase_now(True), "where": None, "exit_code": 3,
            "message": f"rank {rank}: another rank ended during the {phase_now(True)} phase",
            "hint": "its own error is the `error: rank R: ...` line in the launcher's output"})
    try:
        # What the model prints goes to stderr: stdout carries the report alone (a JSON/SARIF/JUnit
        # document stays valid). A second Ctrl-C stops at once, also inside a native call.
        with stdout_to_stderr(), SecondInterrupt():
            suite.reports.append(run_check(s, on_hard_stop=lambda phase, msg: write_error(
                target, s.model, {"type": "user-code", "phase": phase, "message": msg.removeprefix("error: "),
                                  "where": None, "hint": None, "exit_code": 3}), progress=progress,
                verify_progress=verifying))
        return
    except GradcheckError as exc:
        rank_failed(exc, target, s.model)
        info = error_info(exc, True)
        if single:
            write_error(target, s.model, info)
            fail(exc, verbose)
        if main_rank():
            say(f"error: {s.model}: {exc.one_line()}")
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err.print("error: interrupted")
        raise typer.Exit(130)
    except Exception as exc:   # a bug in gradcheck itself: say so, keep the traceback behind --verbose
        rank_failed(exc, target, s.model)
        info = internal_error_info(exc)
        if verbose:   # the traceback, then the same one-line error and exit code as without --verbose
            print_traceback(exc)
        say(f"error: {s.model + ': ' if not single else ''}internal error in gradcheck: {exc_line(exc)} "
            "(re-run with --verbose and report it)")
        if single:
            write_error(target, s.model, info)
            raise typer.Exit(EXIT_INTERNAL)
    suite.errors.append(ModelError(s.model, info))
