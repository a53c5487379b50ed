"""Command line (Typer only): parse options, call the pipeline, pick a renderer, map to an exit code.

`--help`, `--version`, `rules` and `explain` never import torch.
"""



import os
import re
import sys
from contextlib import contextmanager, redirect_stdout
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterator, List, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup


from gradcheck_cli import __version__
from gradcheck_cli.choices import DEVICES, FORMATS, PRECISIONS, SUFFIXES
from gradcheck_cli.errors import EXIT_USAGE, GradcheckError, InputError, exc_line
from gradcheck_cli.findings import FailOn

EXIT_CODES_HELP = (
    "Exit codes: 0 no finding at or above --fail-on; 1 findings at or above --fail-on; "
    "2 usage, configuration or input error; 3 the model's own code raised (import, build, forward, loss); "
    "4 internal error in gradcheck."
)
EXIT_INTERNAL = 4

# Click's UsageError, wherever this Typer version takes Click from (vendored or not).
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class _Group(TyperGroup):
    """Usage errors (bad option values, unknown options) as one `error:` line on stderr, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: ANN001
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":   # `gradcheck` alone: show the help
                typer.echo(exc.ctx.get_help() if exc.ctx else "")
                sys.exit(EXIT_USAGE)
            cmd = exc.ctx.command_path if exc.ctx else "gradcheck"
            _say(f"error: {plain_usage_message(exc.format_message(), args)} (see '{cmd} --help')", markup=False)
            sys.exit(EXIT_USAGE)
        except typer.Abort:
            err.print("error: aborted")
            sys.exit(130)   # not 1, which means "findings"
        sys.exit(rv if isinstance(rv, int) else 0)


_INVALID = re.compile(r"Invalid value for (?P<opt>'[^']+'(?: / '[^']+')*): (?P<detail>.*)", re.S)


def plain_usage_message(message: str, args: list[str] | None = None) -> str:
    """The option parser's messages in plain words: "--steps: expected a whole number, got 'abc'" instead of
    the validation library's "Input should be a valid integer, unable to parse string as an integer"."""
    m = _INVALID.fullmatch(message.strip())
    if not m:
        return message
    names = re.findall(r"'([^']+)'", m["opt"])
    opt = next((n for n in names if n.startswith("--")), names[0])
    detail = m["detail"].strip()
    got = _given_value(names, args or sys.argv[1:])
    got_part = f", got {got!r}" if got is not None else ""
    if "valid integer" in detail:
        return f"{opt}: expected a whole number{got_part}"
    if "valid number" in detail:
        return f"{opt}: expected a number{got_part}"
    bound = re.search(r"greater than or equal to (\S+)", detail)
    if bound:
        return f"{opt}: must be at least {bound[1]}{got_part}"
    bound = re.search(r"greater than (\S+)", detail)
    if bound:
        return f"{opt}: must be more than {bound[1]}{got_part}"
    choice = re.search(r"'([^']*)' is not one of (.*?)\.?$", detail)
    if choice:
        allowed = ", ".join(re.findall(r"'([^']*)'", choice[2]))
        return f"{opt}: {choice[1]!r} is not one of {allowed}"
    return f"{opt}: {detail.removeprefix('Value error, ')}"


def _given_value(names: list[str], args: list[str]) -> str | None:
    """The value given on the command line for an option (its last occurrence), if it can be found."""
    found = None
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                found = args[i + 1]
            elif a.startswith(n + "="):
                found = a[len(n) + 1:]
    return found


class _Command(TyperCommand):
    """Plain help without the type placeholder Typer puts after an argument's name (`MODEL <str>`)."""

    def parse_args(self, ctx, args):  # noqa: ANN001
        # `--verify-fixes` alone means `--verify-fixes=failing` (an option with an optional value, without
        # click's habit of taking the next word, e.g. MODEL, as that value).
        args = ["--verify-fixes=failing" if a == "--verify-fixes" else a for a in args]
        return super().parse_args(ctx, args)

    def get_help(self, ctx) -> str:  # noqa: ANN001
        return re.sub(r"^(  [A-Z_]+) <[a-z]+>", lambda m: m[1] + " " * (len(m[0]) - len(m[1])),
                      super().get_help(ctx), flags=re.M)


app = typer.Typer(
    cls=_Group,
    name="gradcheck",
    help="Gradient-health checker for PyTorch models: runs a few forward/backward passes, measures every "
         "layer and reports vanishing/exploding gradients, NaN/Inf, saturated and dead units, unused "
         "parameters.\n\n" + EXIT_CODES_HELP,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,   # plain help: wrapped at word boundaries, no boxes, no <type> placeholders
)
err = Console(stderr=True, highlight=False, soft_wrap=True)


# Option types built from the one list of choices (gradcheck_cli.choices).
OutputFormat = Enum("OutputFormat", {f: f for f in FORMATS}, type=str, module=__name__)
Device = Enum("Device", {d: d for d in DEVICES}, type=str, module=__name__)
Precision = Enum("Precision", {p: p for p in PRECISIONS}, type=str, module=__name__)
VerifyMode = Enum("VerifyMode", {m: m for m in ("off", "failing", "all")}, type=str, module=__name__)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gradcheck {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    pass


def _say(line: str, markup: bool = False) -> None:
    """One line on stderr; user text in it (paths, exception messages) made printable first."""
    from gradcheck_cli.report.escape import terminal

    err.print(terminal(line), markup=False)


def _fail(exc: GradcheckError, verbose: bool) -> None:
    if not _main_rank():
        raise typer.Exit(exc.exit_code)
    if verbose and exc.__cause__ is not None:
        import traceback

        err.print("".join(traceback.format_exception(type(exc.__cause__), exc.__cause__,
                                                     exc.__cause__.__traceback__)), markup=False)
    _say(f"error: {exc.one_line()}", markup=False)
    raise typer.Exit(exc.exit_code)


def _finite(value: Optional[float]) -> Optional[float]:
    """NaN passes Click's range check (every comparison with it is false): refuse it here."""
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a number of seconds; the valid range is 0.001 to 1000000")
    return value


@app.command(cls=_Command, epilog=EXIT_CODES_HELP, short_help="Check a model and report gradient problems.")
def check(
    model: Annotated[Optional[str], typer.Argument(
        help="The model: path/to/file.py:NAME or package.module:NAME (an nn.Module subclass, a zero-argument "
             "factory, or an instance). Omit it to check every model listed under models: in the config.",
        show_default=False, metavar="MODEL")] = None,
    batch: Annotated[Optional[str], typer.Option(
        metavar="SPEC", help="Batch: a .pt/.pth (loaded with weights_only=True), .npz or .npy file, or a file.py:NAME callable "
             "returning a tensor, an (inputs, targets) pair, or a dict of keyword arguments.")] = None,
    loss: Annotated[Optional[str], typer.Option(
        metavar="SPEC", help="cross-entropy, mse, bce-with-logits, or file.py:NAME (output, target) -> scalar. Default: the "
             "output's own .loss, else cross-entropy for class targets, else MSE.")] = None,
    input_shape: Annotated[Optional[str], typer.Option(
        "--input-shape", metavar="SHAPE", help="Synthetic input shape, batch first, e.g. 8,3,32,32 (inferred from the first "
                              "layer when omitted).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, max=10_000, metavar="N", help="Forward/backward passes to aggregate [default:\u00a03].")] = None,
    format: Annotated[Optional[OutputFormat], typer.Option(
        "--format", "-f", help="Report format on the screen, and for --output paths given without FORMAT: "
                               "[default:\u00a0text].")] = None,
    output: Annotated[Optional[List[str]], typer.Option(
        "--output", "-o", metavar="[FORMAT:]PATH", help="Write a report file (atomically), repeatable: FORMAT:PATH (formats: "
                               f"{', '.join(FORMATS)}) or PATH (format from --format, else from the suffix: "
                               f"{' '.join(s for s in SUFFIXES if s not in ('.markdown', '.htm', '.txt'))}). "
                               "The text report still goes to the screen.")] = None,
    config: Annotated[Optional[Path], typer.Option(
        metavar="PATH", help="YAML config file [default:\u00a0./gradcheck.yaml when present].")] = None,
    fail_on: Annotated[Optional[FailOn], typer.Option(
        "--fail-on", help="Lowest severity that makes the exit code 1 [default:\u00a0warning].")] = None,
    baseline: Annotated[Optional[Path], typer.Option(
        metavar="PATH", help="Baseline file from --write-baseline: findings in it that are not worse do not count toward "
             "the exit code (they are listed as suppressed).")] = None,
    write_baseline: Annotated[Optional[Path], typer.Option(
        "--write-baseline", metavar="PATH", help="Record this run's findings as the new baseline (they are then suppressed "
                                 "in this run too).")] = None,
    seed: Annotated[Optional[int], typer.Option(min=0, max=2**32 - 1, metavar="N", help="Seed for synthetic batches and dropout [default:\u00a00].")] = None,
    device: Annotated[Optional[Device], typer.Option(help="Where to run the passes [default:\u00a0auto].")] = None,
    max_rows: Annotated[Optional[int], typer.Option(
        "--max-rows", min=0, metavar="N", help="Layer-table rows in the text report (0 = all) [default:\u00a040].")] = None,
    timeout: Annotated[Optional[float], typer.Option(
        min=0.001, max=1_000_000, callback=_finite, metavar="SECONDS", help="Stop with exit 3, naming the phase, when the run takes longer than this many seconds "
                        "(a forward pass that never returns), counted from after torch is imported; for CI "
                        "[default:\u00a0off].")] = None,
    color: Annotated[Optional[bool], typer.Option(
        "--color/--no-color", show_default=False,
        help="Colour the text report. Default: colour on a terminal unless NO_COLOR is set; FORCE_COLOR=1 "
             "forces it (for CI logs that show ANSI colours).")] = None,
    fsdp: Annotated[bool, typer.Option(
        "--fsdp", help="Under torchrun: shard the model with FSDP2 (fully_shard on each repeated block and the "
                       "root) instead of plain data parallel.")] = False,
    train_steps: Annotated[Optional[int], typer.Option(
        "--train-steps", min=0, metavar="N",
        help="After the check, train a deep copy of the model for this many real steps "
             "(forward, loss, backward, optimizer step) and judge the trajectory; the model "
             "itself is left untouched [default:\u00a00, off].")] = None,
    optimizer: Annotated[Optional[str], typer.Option(
        metavar="NAME|FILE.py:NAME",
        help="For --train-steps: sgd (momentum 0.9, lr 1e-2), adam (lr 1e-3), adamw (lr 1e-3, weight decay 0.01), "
             "or FILE.py:NAME / pkg.mod:NAME, a factory called with the model (when its first parameter is named "
             "model) or with model.parameters(), returning an optimizer or (optimizer, scheduler) "
             "[default:\u00a0adam].")] = None,
    lr: Annotated[Optional[float], typer.Option(
        metavar="LR", help="For --train-steps: the learning rate (overrides the optimizer's default).")] = None,
    precision: Annotated[Optional[Precision], typer.Option(
        help="For --train-steps: fp32, or bf16/fp16 under torch.autocast (fp16 with a GradScaler) [default:\u00a0fp32].")] = None,
    verify_fixes: Annotated[Optional[VerifyMode], typer.Option(
        "--verify-fixes", metavar="[=all]",
        help="Apply each fix gradcheck can make itself to a deep copy of the model, re-run the same check "
             "(same seed, batches, loss; the same rehearsal with --train-steps) and report whether the finding "
             "is gone, the key number before -> after and anything new. --verify-fixes: the findings at or above "
             "--fail-on; --verify-fixes=all: every finding; =off: none. The exit code stays the model's as "
             "given [default:\u00a0off].")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks of errors.")] = False,
) -> None:
    """Run a few instrumented forward/backward passes on MODEL and report gradient problems.

    With GITHUB_ACTIONS=true, findings are also printed as ::error/::warning workflow commands.
    Under torchrun (WORLD_SIZE > 1) the ranks check slices of one global batch and reduce their
    statistics; rank 0 writes the report.
    """
    from gradcheck_cli import distributed

    ctx = None
    try:
        if distributed.requested(fsdp):
            ctx = distributed.start(fsdp, device.value if device else None, timeout)
        elif fsdp:
            raise InputError("--fsdp needs several processes: launch with torchrun --nproc-per-node N "
                             "-m gradcheck_cli check MODEL --fsdp")
    except GradcheckError as exc:
        _fail(exc, verbose)
    _state["rank"] = ctx.rank if ctx is not None else 0
    try:
        _check(model, batch, loss, input_shape, steps, format, output, config, fail_on, baseline, write_baseline,
               seed, device, max_rows, timeout, color, verbose, ctx, train_steps, optimizer, lr, precision,
               verify_fixes)
    except typer.Exit as done:
        code = done.exit_code
        if ctx is not None:
            code = distributed.agree_code(ctx, code)
        distributed.finish(ctx)
        raise typer.Exit(code) from None


_state: dict = {"rank": 0}


def _main_rank() -> bool:
    """Under torchrun only rank 0 prints reports and errors that every rank agrees on."""
    return _state["rank"] == 0


def _check(model, batch, loss, input_shape, steps, format, output, config, fail_on, baseline,  # noqa: ANN001
           write_baseline, seed, device, max_rows, timeout, color, verbose, ctx, train_steps=None, optimizer=None,
           lr=None, precision=None, verify_fixes=None) -> None:
    from gradcheck_cli import config as cfg
    from gradcheck_cli.batches_shape import parse_shape
    from gradcheck_cli.findings import Suite

    try:   # before torch: torch imports numpy inside a block that loses a Ctrl-C pressed meanwhile
        import numpy  # noqa: F401
    except ImportError:   # pragma: no cover - numpy ships with most torch installs
        pass

    # Where reports go, known as early as possible so that a failed run still leaves them behind.
    target: dict = {"outputs": [], "started": False, "fail_on": FailOn.WARNING}
    fmt = format.value if format else None
    given_inputs = [("model file", _spec_file(model)), ("batch file", _spec_file(batch, file_ok=True)),
                    ("loss file", _spec_file(loss)), ("config", config or cfg.DEFAULT_CONFIG_NAME),
                    ("baseline", baseline)]
    try:
        first = _parse_outputs(output or [], fmt)
        _guard_outputs(first, write_baseline, given_inputs)
        target["outputs"] = _resolved(first)
        shape = parse_shape(input_shape) if input_shape is not None else None
        settings = cfg.resolve({
            "model": model, "batch": batch, "loss": loss, "input_shape": shape, "steps": steps,
            "format": fmt, "outputs": list(output) if output else None,
            "fail_on": fail_on, "seed": seed, "device": device.value if device else None, "max_rows": max_rows,
            "timeout": timeout, "baseline": str(baseline) if baseline else None,
            "train_steps": train_steps, "optimizer": optimizer, "lr": lr,
            "precision": precision.value if precision else None,
            "verify_fixes": verify_fixes.value if verify_fixes else None,
        }, config)
        outputs = _parse_outputs(settings.outputs, fmt if fmt else (
            settings.format if settings.format != "text" else None))
        runs = cfg.expand_models(settings, model_given=model is not None)
        # Every file this run reads; no report may overwrite one of them.
        inputs = given_inputs + [("config", settings.config_path), ("baseline", settings.baseline)]
        for s in runs:
            inputs += [("model file", _spec_file(s.model)), ("batch file", _spec_file(s.batch, file_ok=True)),
                       ("loss file", _spec_file(s.loss))]
        target["outputs"] = []   # an output refused below must not receive the error report either
        _guard_outputs(outputs, write_baseline, inputs)
        for _, path in outputs:
            _check_output_path(path)
        if write_baseline is not None:
            _check_output_path(write_baseline, "--write-baseline")
            write_baseline = Path(os.path.abspath(write_baseline))
        # Absolute now: a model whose code calls os.chdir does not move the reports.
        target.update(outputs=_resolved(outputs), fail_on=settings.fail_on)
        entries = None
        if settings.baseline:
            from gradcheck_cli.baseline import read_baseline

            entries = read_baseline(Path(settings.baseline))
    except GradcheckError as exc:
        _write_error(target, model, _error_info(exc, False))
        _fail(exc, verbose)
    suite = Suite(reports=[], fail_on=settings.fail_on)
    for s in runs:
        _check_one(s, suite, target, verbose, single=len(runs) == 1)
    try:
        from gradcheck_cli import baseline as bl

        if entries is not None:
            bl.apply_baseline(suite, entries, settings.baseline)
        if write_baseline is not None:
            written = bl.write_baseline(suite, write_baseline)
            if entries is None:   # what was just recorded is accepted in this run too
                bl.apply_baseline(suite, written, str(write_baseline))
        _emit(suite, settings, target["outputs"], color)
    except GradcheckError as exc:
        _fail(exc, verbose)
    raise typer.Exit(suite.exit_code)


def _check_one(s, suite, target: dict, verbose: bool, single: bool) -> None:
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
    from gradcheck_cli.findings import ModelError
    from gradcheck_cli.pipeline import run_check

    from gradcheck_cli.deadline import SecondInterrupt

    from gradcheck_cli import distributed

    target["started"] = True
    ctx = distributed.current()
    if ctx is not None:   # torchrun's SIGTERM after another rank failed: rank 0 still writes the report
        distributed.on_terminated = lambda rank=ctx.rank: _write_error(target, s.model, {
            "type": "user-code", "phase": _phase_now(True), "where": None, "exit_code": 3,
            "message": f"rank {rank}: another rank ended during the {_phase_now(True)} phase",
            "hint": "its own error is the `error: rank R: ...` line in the launcher's output"})
    try:
        # What the model prints goes to stderr: stdout carries the report alone (a JSON/SARIF/JUnit
        # document stays valid). A second Ctrl-C stops at once, also inside a native call.
        with _stdout_to_stderr(), SecondInterrupt():
            suite.reports.append(run_check(s, on_hard_stop=lambda phase, msg: _write_error(
                target, s.model, {"type": "user-code", "phase": phase, "message": msg.removeprefix("error: "),
                                  "where": None, "hint": None, "exit_code": 3}), progress=progress,
                verify_progress=verifying))
        return
    except GradcheckError as exc:
        _rank_failed(exc, target, s.model)
        info = _error_info(exc, True)
        if single:
            _write_error(target, s.model, info)
            _fail(exc, verbose)
        if _main_rank():
            _say(f"error: {s.model}: {exc.one_line()}", markup=False)
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err.print("error: interrupted")
        raise typer.Exit(130)
    except Exception as exc:   # a bug in gradcheck itself: say so, keep the traceback behind --verbose
        _rank_failed(exc, target, s.model)
        info = {"type": "internal", "phase": _phase_now(True), "message": exc_line(exc), "where": None,
                "hint": "re-run with --verbose and report it", "exit_code": EXIT_INTERNAL}
        if verbose:   # the traceback, then the same one-line error and exit code as without --verbose
            import traceback

            err.print("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), markup=False)
        _say(f"error: {s.model + ': ' if not single else ''}internal error in gradcheck: {exc_line(exc)} "
                  "(re-run with --verbose and report it)", markup=False)
        if single:
            _write_error(target, s.model, info)
            raise typer.Exit(EXIT_INTERNAL)
    suite.errors.append(ModelError(s.model, info))


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
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


def _spec_file(spec: str | None, file_ok: bool = False) -> str | None:
    """The file a model/batch/loss spec reads ('net.py:build' -> 'net.py'; a batch may be a file itself)."""
    if not spec or not isinstance(spec, str):
        return None
    target, sep, _ = spec.rpartition(":")
    if sep and target and (target.endswith(".py") or "/" in target or "\\" in target):
        return target
    return spec if file_ok and not sep else None


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)   # hard links
    except (OSError, ValueError):
        return False


def _guard_outputs(outputs: list[tuple[str, Path]], write_baseline: Path | None,
                   inputs: list[tuple[str, str | Path | None]]) -> None:
    """Refuse an output that would overwrite a file this run reads, and two outputs to one path."""
    from gradcheck_cli.paths import shown

    named = [(f"--output {shown(p)}", p) for _, p in outputs]
    if write_baseline is not None:
        named.append((f"--write-baseline {shown(write_baseline)}", write_baseline))
    for i, (flag, path) in enumerate(named):
        if str(path) == STDOUT:
            if any(str(q) == STDOUT for _, q in named[:i]):
                raise InputError(f"{flag}: stdout is already the destination of another --output",
                                 hint="give one of them a file path")
            if flag.startswith("--write-baseline"):
                raise InputError("--write-baseline -: the baseline must be a file", hint="give a file path")
            continue
        for what, src in inputs:
            if src is None or (what == "baseline" and flag.startswith("--write-baseline")):
                continue   # --baseline b.json --write-baseline b.json updates the baseline: allowed
            if _same_file(path, src):
                raise InputError(f"{flag} would overwrite the {what} {shown(src)}, which this run reads",
                                 hint="choose another output path")
        for other_flag, other in named[:i]:
            if str(other) != STDOUT and _same_file(path, other):
                raise InputError(f"{flag} and {other_flag} are the same file; one would overwrite the other",
                                 hint="give each output its own path")


def _resolved(outputs: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    return [(f, p if str(p) == STDOUT else Path(os.path.abspath(p))) for f, p in outputs]


# `--output -` (or FORMAT:-) writes that report to stdout instead of a file.
STDOUT = "-"
def _rank_failed(exc: BaseException, target: dict, model: str | None) -> None:
    """Under torchrun, an error the ranks did not agree on (one raised inside the passes, where the other
    ranks may be waiting in a collective) ends this rank now with exit 3; the others follow with 3.
    This rank prints its error (rank 0 also writes it to the --output files); a rank that only lost its
    peers prints nothing."""
    from gradcheck_cli import distributed

    ctx = distributed.current()
    if ctx is None or getattr(exc, "agreed", False):
        return
    if isinstance(exc, GradcheckError):
        info, line = _error_info(exc, True), exc.one_line()
    else:
        info = {"type": "internal", "phase": _phase_now(True), "message": exc_line(exc), "where": None,
                "hint": "re-run with --verbose and report it", "exit_code": EXIT_INTERNAL}
        line = f"internal error in gradcheck: {exc_line(exc)}"
    if distributed.peer_lost(exc):
        info.update(message=f"rank {ctx.rank}: another rank ended during the {info['phase']} phase",
                    exit_code=3)
        _write_error(target, model, info)
        distributed.fatal(exc, ctx, "", 3)
    info.update(message=f"rank {ctx.rank}: {info['message']}", exit_code=3)
    _write_error(target, model, info)
    distributed.fatal(exc, ctx, f"error: rank {ctx.rank}: {line}", 3)


def _parse_outputs(values: list[str], default_format: str | None) -> list[tuple[str, Path]]:
    from gradcheck_cli.report import parse_output

    return [parse_output(v, default_format) for v in values]


def _phase_now(started: bool) -> str:
    if not started:
        return "options"
    from gradcheck_cli.deadline import phase

    return phase()


def _error_info(exc: GradcheckError, started: bool) -> dict:
    from gradcheck_cli.errors import UserCodeError

    user = isinstance(exc, UserCodeError)
    return {"type": "user-code" if user else "input",
            "phase": exc.phase if user else ("config" if type(exc).__name__ == "ConfigError" else _phase_now(started)),
            "message": exc.message, "where": getattr(exc, "where", None), "hint": exc.hint,
            "exit_code": exc.exit_code}


def _write_error(target: dict, model: str | None, error: dict) -> None:
    """With --output, a failed run still writes its reports (with the error) for CI to read."""
    if not target.get("outputs") or not _main_rank():
        return
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
            _check_output_path(path)
            write_error_file(error, model, fmt, path, fail_on=target["fail_on"])
        except (GradcheckError, OSError):
            continue   # the output path itself is the problem: the error line says so


def _check_output_path(output: Path | str | None, flag: str = "--output") -> None:
    """Fail before the passes, not after them, when a file could not be written."""
    if not output or str(output) == STDOUT:
        return
    from gradcheck_cli.paths import shown

    path = Path(output)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        if not parent.is_dir():
            raise InputError(f"cannot write {shown(path)}: directory {shown(parent)} does not exist",
                             hint=f"create it first or choose another {flag}")
        if path.is_dir():
            raise InputError(f"cannot write {shown(path)}: it is a directory", hint=f"give a file path to {flag}")
        if path.exists() and not path.is_file():
            raise InputError(f"cannot write {shown(path)}: it is not a regular file (a FIFO or a device)",
                             hint=f"give a file path to {flag}")
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise InputError(f"cannot write {shown(path)}: permission denied", hint=f"choose another {flag}")
    except OSError as exc:   # a name too long for the file system, a symbolic-link loop
        raise InputError(f"cannot write {shown(path)}: {exc.strerror or exc}", hint=f"choose another {flag}") from None


def _emit(suite, settings, outputs: list[tuple[str, Path]], color: bool | None = None) -> None:
    if not _main_rank():   # under torchrun, rank 0 writes the reports
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


@app.command("rules", short_help="List every rule.")
def list_rules() -> None:
    """List every rule: id, code, default severity and a one-line summary."""
    from rich.table import Table

    from gradcheck_cli.rules import RULES

    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("code", no_wrap=True)
    table.add_column("id", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("summary")
    for r in RULES:
        table.add_row(r.code, r.id, r.severity.value, r.summary)
    Console(highlight=False).print(table)


@app.command(cls=_Command, short_help="Show a rule's documentation.")
def explain(rule: Annotated[str, typer.Argument(metavar="RULE", help="Rule id (e.g. vanishing-gradients) or code (GC101).")]) -> None:
    """Show a rule's full documentation: what it does, why it matters, example, fixes, options."""
    from rich.text import Text

    from gradcheck_cli.rules import RULES, get_rule

    r = get_rule(rule)
    if r is None:
        import difflib

        ids = [x.id for x in RULES]
        close = difflib.get_close_matches(rule, ids, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known rules: {', '.join(ids)}"
        _say(f"error: unknown rule {rule!r} ({hint})", markup=False)
        raise typer.Exit(EXIT_USAGE)
    out = Console(highlight=False)
    out.print(Text(f"{r.code} {r.id}", style="bold"), Text(f"(default severity: {r.severity.value})"))
    out.print(Text(r.summary))
    for title, body in r.sections().items():
        out.print()
        out.print(Text(title, style="bold underline"))
        out.print(Text(_unwrap(body)))
    if r.options:
        out.print()
        out.print(Text("Options (config: rules: {%s: {option: value}})" % r.id, style="bold underline"))
        for o in r.options:
            out.print(Text(f"  {o.name} = {o.default!r}: {o.help}"))


def _unwrap(body: str) -> str:
    """Re-flow the docstring's indented paragraphs so Rich can wrap them to the terminal."""
    paras, cur = [], []
    for line in body.splitlines():
        if line.strip():
            cur.append(line.strip())
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    return "\n\n".join(paras)


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        _exit_despite_threads(exc.code)
        raise


def _exit_despite_threads(code: object) -> None:
    """The verdict is final: a non-daemon thread the model started must not keep the process alive (or
    change the exit code when it ends). Exit at once, after flushing, when one is still running."""
    import threading

    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon
              and t.is_alive()]
    if not others:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


if __name__ == "__main__":
    main()
