"""Command line (Typer only): parse options, call the pipeline, pick a renderer, map to an exit code.

`--help`, `--version`, `rules` and `explain` never import torch.

Not here: the option parser's messages in plain words (usage_messages.py), where reports go (output_paths.py),
each model's check and its errors (model_runs.py), failed runs (run_errors.py), writing the reports (emit.py).
"""

import os
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from gradcheck_cli import __version__
from gradcheck_cli.choices import DEVICES, FORMATS, PRECISIONS, SUFFIXES
from gradcheck_cli.errors import EXIT_USAGE, GradcheckError, InputError
from gradcheck_cli.findings import FailOn
from gradcheck_cli.run_errors import err, fail, say, set_rank

EXIT_CODES_HELP = (
    "Exit codes: 0 no finding at or above --fail-on; 1 findings at or above --fail-on; "
    "2 usage, configuration or input error; 3 the model's own code raised (import, build, forward, loss); "
    "4 internal error in gradcheck."
)

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
            from gradcheck_cli.usage_messages import plain_usage_message

            cmd = exc.ctx.command_path if exc.ctx else "gradcheck"
            say(f"error: {plain_usage_message(exc.format_message(), args)} (see '{cmd} --help')")
            sys.exit(EXIT_USAGE)
        except typer.Abort:
            err.print("error: aborted")
            sys.exit(130)   # not 1, which means "findings"
        sys.exit(rv if isinstance(rv, int) else 0)


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
        fail(exc, verbose)
    set_rank(ctx.rank if ctx is not None else 0)
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


def _check(model, batch, loss, input_shape, steps, format, output, config, fail_on, baseline,  # noqa: ANN001
           write_baseline, seed, device, max_rows, timeout, color, verbose, ctx, train_steps=None, optimizer=None,
           lr=None, precision=None, verify_fixes=None) -> None:
    from gradcheck_cli import config as cfg
    from gradcheck_cli.batches_shape import parse_shape
    from gradcheck_cli.emit import emit
    from gradcheck_cli.findings import Suite
    from gradcheck_cli.model_runs import check_one
    from gradcheck_cli.output_paths import check_output_path, guard_outputs, parse_outputs, resolved, spec_file
    from gradcheck_cli.run_errors import error_info, write_error

    try:   # before torch: torch imports numpy inside a block that loses a Ctrl-C pressed meanwhile
        import numpy  # noqa: F401
    except ImportError:   # pragma: no cover - numpy ships with most torch installs
        pass

    # Where reports go, known as early as possible so that a failed run still leaves them behind.
    target: dict = {"outputs": [], "started": False, "fail_on": FailOn.WARNING}
    fmt = format.value if format else None
    given_inputs = [("model file", spec_file(model)), ("batch file", spec_file(batch, file_ok=True)),
                    ("loss file", spec_file(loss)), ("config", config or cfg.DEFAULT_CONFIG_NAME),
                    ("baseline", baseline)]
    try:
        first = parse_outputs(output or [], fmt)
        guard_outputs(first, write_baseline, given_inputs)
        target["outputs"] = resolved(first)
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
        outputs = parse_outputs(settings.outputs, fmt if fmt else (
            settings.format if settings.format != "text" else None))
        runs = cfg.expand_models(settings, model_given=model is not None)
        # Every file this run reads; no report may overwrite one of them.
        inputs = given_inputs + [("config", settings.config_path), ("baseline", settings.baseline)]
        for s in runs:
            inputs += [("model file", spec_file(s.model)), ("batch file", spec_file(s.batch, file_ok=True)),
                       ("loss file", spec_file(s.loss))]
        target["outputs"] = []   # an output refused below must not receive the error report either
        guard_outputs(outputs, write_baseline, inputs)
        for _, path in outputs:
            check_output_path(path)
        if write_baseline is not None:
            check_output_path(write_baseline, "--write-baseline")
            write_baseline = Path(os.path.abspath(write_baseline))
        # Absolute now: a model whose code calls os.chdir does not move the reports.
        target.update(outputs=resolved(outputs), fail_on=settings.fail_on)
        entries = None
        if settings.baseline:
            from gradcheck_cli.baseline import read_baseline

            entries = read_baseline(Path(settings.baseline))
    except GradcheckError as exc:
        write_error(target, model, error_info(exc, False))
        fail(exc, verbose)
    suite = Suite(reports=[], fail_on=settings.fail_on)
    for s in runs:
        check_one(s, suite, target, verbose, single=len(runs) == 1)
    try:
        from gradcheck_cli import baseline as bl

        if entries is not None:
            bl.apply_baseline(suite, entries, settings.baseline)
        if write_baseline is not None:
            written = bl.write_baseline(suite, write_baseline)
            if entries is None:   # what was just recorded is accepted in this run too
                bl.apply_baseline(suite, written, str(write_baseline))
        emit(suite, settings, target["outputs"], color)
    except GradcheckError as exc:
        fail(exc, verbose)
    if ctx is not None:   # the reports are written: a SIGTERM from torchrun now must not replace them
        from gradcheck_cli import distributed

        distributed.on_terminated = None
    raise typer.Exit(suite.exit_code)


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
        say(f"error: unknown rule {rule!r} ({hint})")
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
