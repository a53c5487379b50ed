"""Command line (Typer only): parse options, call the pipeline, pick a renderer, map to an exit code.

`--help`, `--version`, `rules` and `explain` never import torch.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from typer.core import TyperGroup
from typing_extensions import Annotated

from gradcheck_cli import __version__
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
            err.print(f"error: {exc.format_message()} (see '{cmd} --help')", markup=False)
            sys.exit(EXIT_USAGE)
        except typer.Abort:
            err.print("error: aborted")
            sys.exit(130)   # not 1, which means "findings"
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_Group,
    name="gradcheck",
    help="Gradient-health checker for PyTorch models: runs a few forward/backward passes, measures every "
         "layer and reports vanishing/exploding gradients, NaN/Inf, saturated and dead units, unused "
         "parameters.\n\n" + EXIT_CODES_HELP,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class OutputFormat(str, Enum):
    text = "text"
    json = "json"
    sarif = "sarif"
    junit = "junit"
    markdown = "markdown"
    html = "html"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


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


def _fail(exc: GradcheckError, verbose: bool) -> None:
    if verbose and exc.__cause__ is not None:
        import traceback

        err.print("".join(traceback.format_exception(type(exc.__cause__), exc.__cause__,
                                                     exc.__cause__.__traceback__)), markup=False)
    err.print(f"error: {exc.one_line()}", markup=False)
    raise typer.Exit(exc.exit_code)


@app.command(epilog=EXIT_CODES_HELP)
def check(
    model: Annotated[Optional[str], typer.Argument(
        help="The model: path/to/file.py:NAME or package.module:NAME (an nn.Module subclass, a zero-argument "
             "factory, or an instance). Omit it to check every model listed under models: in the config.",
        show_default=False, metavar="MODEL")] = None,
    batch: Annotated[Optional[str], typer.Option(
        help="Batch: a .pt/.pth (loaded with weights_only=True), .npz or .npy file, or a file.py:NAME callable "
             "returning a tensor, an (inputs, targets) pair, or a dict of keyword arguments.")] = None,
    loss: Annotated[Optional[str], typer.Option(
        help="cross-entropy, mse, bce-with-logits, or file.py:NAME (output, target) -> scalar. Default: the "
             "output's own .loss, else cross-entropy for class targets, else MSE.")] = None,
    input_shape: Annotated[Optional[str], typer.Option(
        "--input-shape", help="Synthetic input shape, batch first, e.g. 8,3,32,32 (inferred from the first "
                              "layer when omitted).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Forward/backward passes to aggregate \\[default: 3].")] = None,
    format: Annotated[Optional[OutputFormat], typer.Option(
        "--format", "-f", help="Report format on the screen, and for --output paths given without FORMAT: "
                               "\\[default: text].")] = None,
    output: Annotated[Optional[List[str]], typer.Option(
        "--output", "-o", metavar="[FORMAT:]PATH", help="Write a report file (atomically), repeatable: FORMAT:PATH (formats: text, json, "
                               "sarif, junit, markdown, html) or PATH (format from --format, else from the "
                               "suffix: .json .sarif .xml .md .html). The text report still goes to the "
                               "screen.")] = None,
    config: Annotated[Optional[Path], typer.Option(
        help="YAML config file \\[default: ./gradcheck.yaml when present].")] = None,
    fail_on: Annotated[Optional[FailOn], typer.Option(
        "--fail-on", help="Lowest severity that makes the exit code 1 \\[default: warning].")] = None,
    baseline: Annotated[Optional[Path], typer.Option(
        help="Baseline file from --write-baseline: findings in it that are not worse do not count toward "
             "the exit code (they are listed as suppressed).")] = None,
    write_baseline: Annotated[Optional[Path], typer.Option(
        "--write-baseline", help="Record this run's findings as the new baseline (they are then suppressed "
                                 "in this run too).")] = None,
    seed: Annotated[Optional[int], typer.Option(min=0, help="Seed for synthetic batches and dropout \\[default: 0].")] = None,
    device: Annotated[Optional[Device], typer.Option(help="Where to run the passes \\[default: auto].")] = None,
    max_rows: Annotated[Optional[int], typer.Option(
        "--max-rows", min=0, help="Layer-table rows in the text report (0 = all) \\[default: 40].")] = None,
    timeout: Annotated[Optional[float], typer.Option(
        min=0.001, help="Stop with exit 3, naming the phase, when the run takes longer than this many seconds "
                        "(a forward pass that never returns); for CI \\[default: off].")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks of errors.")] = False,
) -> None:
    """Run a few instrumented forward/backward passes on MODEL and report gradient problems.

    With GITHUB_ACTIONS=true, findings are also printed as ::error/::warning workflow commands.
    """
    from gradcheck_cli import config as cfg
    from gradcheck_cli.batches_shape import parse_shape
    from gradcheck_cli.findings import Suite

    # Where reports go, known as early as possible so that a failed run still leaves them behind.
    target: dict = {"outputs": [], "started": False, "fail_on": FailOn.WARNING}
    fmt = format.value if format else None
    try:
        target["outputs"] = _parse_outputs(output or [], fmt)
        shape = parse_shape(input_shape) if input_shape is not None else None
        settings = cfg.resolve({
            "model": model, "batch": batch, "loss": loss, "input_shape": shape, "steps": steps,
            "format": fmt, "outputs": list(output) if output else None,
            "fail_on": fail_on, "seed": seed, "device": device.value if device else None, "max_rows": max_rows,
            "timeout": timeout, "baseline": str(baseline) if baseline else None,
        }, config)
        target.update(outputs=_parse_outputs(settings.outputs, fmt if fmt else (
            settings.format if settings.format != "text" else None)), fail_on=settings.fail_on)
        for _, path in target["outputs"]:
            _check_output_path(path)
        if write_baseline is not None:
            _check_output_path(write_baseline, "--write-baseline")
        runs = cfg.expand_models(settings, model_given=model is not None)
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
        _emit(suite, settings, target["outputs"])
    except GradcheckError as exc:
        _fail(exc, verbose)
    raise typer.Exit(suite.exit_code)


def _check_one(s, suite, target: dict, verbose: bool, single: bool) -> None:
    """Check one model into `suite`. With one model, an error ends the run (exit 2-4); with several, it is
    recorded for that model, said on stderr, and the other models are still checked."""
    from gradcheck_cli.findings import ModelError
    from gradcheck_cli.pipeline import run_check

    target["started"] = True
    try:
        suite.reports.append(run_check(s, on_hard_stop=lambda phase, msg: _write_error(
            target, s.model, {"type": "user-code", "phase": phase, "message": msg.removeprefix("error: "),
                              "where": None, "hint": None, "exit_code": 3})))
        return
    except GradcheckError as exc:
        info = _error_info(exc, True)
        if single:
            _write_error(target, s.model, info)
            _fail(exc, verbose)
        err.print(f"error: {s.model}: {exc.one_line()}", markup=False)
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err.print("error: interrupted")
        raise typer.Exit(130)
    except Exception as exc:   # a bug in gradcheck itself: say so, keep the traceback behind --verbose
        info = {"type": "internal", "phase": _phase_now(True), "message": exc_line(exc), "where": None,
                "hint": "re-run with --verbose and report it", "exit_code": EXIT_INTERNAL}
        if verbose:   # the traceback, then the same one-line error and exit code as without --verbose
            import traceback

            err.print("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), markup=False)
        err.print(f"error: {s.model + ': ' if not single else ''}internal error in gradcheck: {exc_line(exc)} "
                  "(re-run with --verbose and report it)", markup=False)
        if single:
            _write_error(target, s.model, info)
            raise typer.Exit(EXIT_INTERNAL)
    suite.errors.append(ModelError(s.model, info))


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
    if not target.get("outputs"):
        return
    from gradcheck_cli.report import write_error_file

    for fmt, path in target["outputs"]:
        try:
            _check_output_path(path)
            write_error_file(error, model, fmt, path, fail_on=target["fail_on"])
        except (GradcheckError, OSError):
            continue   # the output path itself is the problem: the error line says so


def _check_output_path(output: Path | str | None, flag: str = "--output") -> None:
    """Fail before the passes, not after them, when a file could not be written."""
    if not output:
        return
    path = Path(output)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: directory {parent} does not exist",
                         hint=f"create it first or choose another {flag}")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a directory", hint=f"give a file path to {flag}")
    import os

    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"cannot write {path}: permission denied", hint=f"choose another {flag}")


def _emit(suite, settings, outputs: list[tuple[str, Path]]) -> None:
    import os

    from gradcheck_cli import report as renderers

    for fmt, path in outputs:
        try:
            renderers.write_file(suite, fmt, path, max_rows=settings.max_rows)
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    screen = "text" if outputs else settings.format
    renderers.render(suite, screen, sys.stdout, max_rows=settings.max_rows)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        from gradcheck_cli.report.github import annotations

        # Workflow commands are read from stdout and stderr; keep machine formats on stdout clean.
        stream = sys.stdout if screen in ("text", "markdown") else sys.stderr
        for line in annotations(suite):
            stream.write(line + "\n")
        stream.flush()


@app.command("rules")
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


@app.command()
def explain(rule: Annotated[str, typer.Argument(help="Rule id (e.g. vanishing-gradients) or code (GC101).")]) -> None:
    """Show a rule's full documentation: what it does, why it matters, example, fixes, options."""
    from rich.text import Text

    from gradcheck_cli.rules import RULES, get_rule

    r = get_rule(rule)
    if r is None:
        import difflib

        ids = [x.id for x in RULES]
        close = difflib.get_close_matches(rule, ids, n=1)
        hint = f"did you mean {close[0]}?" if close else f"known rules: {', '.join(ids)}"
        err.print(f"error: unknown rule {rule!r} ({hint})", markup=False)
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
    app()


if __name__ == "__main__":
    main()
