"""Terminal report: header, per-layer table, findings with evidence and fixes, verdict.

Laid out for the width it is given (the terminal's, or `width=`): prose is wrapped at word boundaries with its
labels kept in a column; the per-layer table (gradcheck_cli/report/text_table.py) keeps every row on one line.
Piped (not a terminal, no width given) nothing is wrapped, so `grep` finds every line whole; no line ends in
spaces. Colour follows NO_COLOR / FORCE_COLOR unless `color=` says otherwise, and is never written when the
output is not a terminal.
"""

from __future__ import annotations

from typing import Any, TextIO

from rich.console import Console
from rich.text import Text

from gradcheck_cli import __version__
from gradcheck_cli.findings import ModelError, Report, Severity, Suite
from gradcheck_cli.numbers import count_phrase, fmt, plural
from gradcheck_cli.report import verification as vf
from gradcheck_cli.report.escape import terminal as _t
from gradcheck_cli.report.text_table import MARK, layer_table
from gradcheck_cli.report.view import ReportView, build_view

LABEL = 9        # width of the "evidence " / "fix 1    " column under a finding
_SEV_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "bold yellow", Severity.INFO: "bold blue"}


# -- prose --------------------------------------------------------------------------------------------------

def _wrap(console: Console, text: Text, width: int | None, indent: int = 0, first: Text | None = None) -> list[Text]:
    """`first` (a label or an indent; none by default) then `text`, wrapped at word boundaries to `width`, the
    following lines indented by `indent`; one unwrapped line when width is None (piped output)."""
    prefix = first if first is not None else Text()
    if width is None or width - max(indent, len(prefix.plain)) < 20:
        out = prefix.copy()
        out.append_text(text)
        return [out]
    pieces = text.wrap(console, width - max(indent, len(prefix.plain)), overflow="fold")
    lines = []
    for i, piece in enumerate(pieces):
        line = prefix.copy() if i == 0 else Text(" " * indent)
        piece.rstrip()
        line.append_text(piece)
        lines.append(line)
    return lines or [prefix]


def _evidence_value(v: Any) -> str | None:
    if isinstance(v, dict):
        items = list(v.items())
        inner = ", ".join(
            f"{k}: " + ("/".join(fmt(x) for x in vv.values()) if isinstance(vv, dict) else fmt(vv))
            for k, vv in items[:6])
        return "{" + inner + (", …" if len(items) > 6 else "") + "}"
    if isinstance(v, list):
        if len(v) > 6:
            return None   # long profiles and lists stay in the JSON report
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    return fmt(v)


def _evidence_line(evidence: dict[str, Any]) -> str:
    parts = []
    for k, v in evidence.items():
        text = _evidence_value(v)
        if text is not None:
            parts.append(f"{k}={text}")
    return "; ".join(parts)


# -- the whole report -----------------------------------------------------------------------------------------

def _console(out: TextIO, color: bool | None) -> Console:
    """color None: Rich decides (a terminal gets colour unless NO_COLOR is set; FORCE_COLOR forces it, for
    CI logs that render ANSI); True/False: --color/--no-color."""
    if color is None:
        return Console(file=out, highlight=False, emoji=False, soft_wrap=True)
    if color:
        return Console(file=out, force_terminal=True, no_color=False, highlight=False, emoji=False, soft_wrap=True)
    return Console(file=out, force_terminal=False, no_color=True, color_system=None, highlight=False, emoji=False,
                   soft_wrap=True)


def _layout_width(out: TextIO, console: Console, width: int | None) -> int | None:
    """The width to lay out for: the one given, a terminal's own, or none (piped: nothing is wrapped)."""
    if width is not None:
        return width
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    return console.size.width if tty else None


def render(suite: Suite, out: TextIO, *, color: bool | None = None, width: int | None = None,
           max_rows: int = 40, views: list[ReportView] | None = None, **_: object) -> None:
    console = _console(out, color)
    w = _layout_width(out, console, width)
    views = views if views is not None else [build_view(r) for r in suite.reports]
    lines: list[Text] = []
    rule = Text("─" * min(w or 80, 80), style="dim")
    for i, (report, view) in enumerate(zip(suite.reports, views)):
        if i:
            lines.append(rule)
        lines += report_lines(report, view, console, max_rows, w)
    for e in suite.errors:
        if suite.reports or e is not suite.errors[0]:
            lines.append(rule)
        lines += error_lines(e, console, w)
    if suite.baseline is not None:
        b = suite.baseline
        line = Text(f"baseline {_t(b['path'])}: {plural(b['suppressed'], 'finding')} suppressed (present in the "
                    "baseline, not worse)", style="dim")
        if b["resolved"]:
            n = len(b["resolved"])
            line.append(f"; {n} baseline entr{'ies' if n != 1 else 'y'} no longer found "
                        "(re-run with --write-baseline to drop them)")
        lines += _wrap(console, line, w)
    if not suite.single:
        total = Text()
        total.append({"pass": "✓ PASS", "fail": "✗ FAIL", "error": "✗ ERROR"}[suite.verdict],
                     style="bold red" if suite.exit_code else "bold green")
        n = len(suite.reports) + len(suite.errors)
        unchecked = f", {len(suite.errors)} could not be checked" if suite.errors else ""
        total.append(f"  {n} models{unchecked}: {count_phrase(suite.counts())} (fail-on {suite.fail_on.value}) "
                     f"→ exit {suite.exit_code}")
        lines += _wrap(console, total, w, indent=8)
    for line in lines:
        line.rstrip()
        console.print(line, soft_wrap=True, crop=False)


def error_lines(e: ModelError, console: Console, width: int | None) -> list[Text]:
    """A model that could not be checked: what went wrong, where, and what to do."""
    err = e.error
    head = Text()
    head.append(f"gradcheck {__version__}", style="bold")
    head.append(f"  {_t(e.spec)}")
    where = f" in {_t(err['where'])}" if err.get("where") else ""
    hint = f" ({_t(err['hint'])})" if err.get("hint") else ""
    line = Text()
    line.append("✗ ERROR", style="bold red")
    line.append(f"  {err['type']} error during {err['phase']}{where}: {_t(err['message'])}{hint} → exit {err['exit_code']}")
    return [head] + _wrap(console, line, width, indent=9)


def run_detail(s: dict) -> str:
    """`seed N` for a check; for a watched training run (no seed of ours) which steps were measured."""
    if s.get("seed") is None and "every" in s:
        return f"{s.get('measured_steps')} measured (every {s['every']})"
    return f"seed {s.get('seed')}"


def _field(console: Console, label: str, value: str, width: int | None) -> list[Text]:
    first = Text()
    first.append(f"{label:<7}", style="dim")
    return _wrap(console, Text(value), width, indent=7, first=first)


def report_lines(report: Report, view: ReportView, console: Console, max_rows: int = 40,
                 width: int | None = None) -> list[Text]:
    m, s, t = report.model, report.settings, report.timings
    lines: list[Text] = []
    head = Text()
    head.append(f"gradcheck {report.tool_version}", style="bold")
    head.append(f"  {_t(m['spec'])}")
    lines += _wrap(console, head, width, indent=2)
    trainable = ("all trainable" if m["trainable_parameters"] == m["parameters"]
                 else f"{fmt(m['trainable_parameters'])} trainable")
    lines += _field(console, "model", f"{_t(m['class'])}, {plural(m['layers_measured'], 'layer')} measured, "
                    f"{fmt(m['parameters'])} parameters ({trainable})", width)
    lines += _field(console, "batch", _t(s["batch"]), width)
    lines += _field(console, "loss", _t(s["loss"]), width)
    dist = f", {report.distribution}" if report.distribution else ""
    lines += _field(console, "run", f"{plural(s['steps'], 'step')}, {run_detail(s)}, {s['device']}{dist}; "
                    f"{t.get('total_s', 0):.2f} s (load {t.get('load_s', 0):.2f}, passes {t.get('passes_s', 0):.2f}, "
                    f"analysis {t.get('analysis_s', 0):.2f}"
                    + (f", verifying fixes {t['verify_s']:.2f}" if "verify_s" in t else "") + ")", width)
    lines.append(Text())
    if view.layers:
        lines += layer_table(view, max_rows, width)
        legend = ("|∇W|: weight-gradient norm; |∂L/∂y|: gradient w.r.t. the layer's output; flow: |∂L/∂y| on a "
                  "log scale")
        if view.flagged:
            legend += f"; {MARK}: a finding covers the layer"
        lines += _wrap(console, Text(legend + ".", style="dim"), width)
        lines.append(Text())
    if report.training is not None:
        lines += training_lines(report.training, console, width)
    for note in report.notes:
        lines += _wrap(console, Text(f"note: {_t(note)}", style="yellow"), width, indent=6)
    findings = report.active_findings()
    if findings:
        lines.append(Text("Findings", style="bold underline"))
    for f in findings:
        line = Text()
        line.append(f"{f.severity.value.upper():7}", style=_SEV_STYLE[f.severity])
        line.append(f" {f.code} {f.rule}", style="bold")
        if f.layer is not None:
            line.append(f" at {_t(f.layer or '(model)')}")
        if f.location:
            line.append(f" ({_t(f.location['file'])}:{f.location['line']})", style="dim")
        lines += _wrap(console, line, width, indent=8)
        pad = 2 + LABEL
        lines += _wrap(console, Text(_t(f.message)), width, indent=pad, first=Text(" " * pad))
        if f.evidence:
            lines += _wrap(console, Text(_t(_evidence_line(f.evidence)), style="dim"), width, indent=pad,
                           first=Text(f"  {'evidence':<{LABEL}}", style="dim"))
        checked = vf.by_fix(f.verification)
        for i, fix in enumerate(f.fixes, 1):
            lines += _wrap(console, Text(_t(fix), style="green"), width, indent=pad,
                           first=Text(f"  {'fix ' + str(i):<{LABEL}}", style="dim"))
            v = checked.get(i - 1)
            if v is not None:
                lines += _verification_lines(console, v, width, pad)
        lines.append(Text())
    suppressed = report.suppressed_findings()
    if suppressed:
        lines.append(Text("Suppressed (not counted toward the exit code)", style="bold underline"))
        for f in suppressed:
            line = Text()
            line.append(f"{f.severity.value.upper():7}", style="dim")
            line.append(f" {f.code} {f.rule}" + (f" at {_t(f.layer or '(model)')}" if f.layer is not None else ""))
            line.append(f": {f.suppressed['by']}, {_t(f.suppressed['reason'])}", style="dim")
            lines += _wrap(console, line, width, indent=8)
        lines.append(Text())
    verdict = Text()
    if report.verdict == "fail":
        verdict.append("✗ FAIL", style="bold red")
    else:
        verdict.append("✓ PASS", style="bold green")
    verdict.append(f"  {count_phrase(report.counts(), len(suppressed))} (fail-on {report.fail_on.value}) "
                   f"→ exit {report.exit_code}")
    lines += _wrap(console, verdict, width, indent=8)
    return lines


def _verification_lines(console: Console, v: dict[str, Any], width: int | None, pad: int) -> list[Text]:
    """Below a fix: "✓ verified: early/late |dL/dy| 1.16e-07 -> 0.504" and what was changed."""
    if v.get("change") is None:
        return _wrap(console, Text(_t(vf.headline(v)), style="dim"), width, indent=pad + 2, first=Text(" " * pad))
    style = "bold green" if v.get("resolved") and not v.get("new_findings") else (
        "bold yellow" if v.get("resolved") else "bold red")
    line = Text(f"{vf.mark(v)} {vf.status(v)}", style=style)
    rest = "; ".join(x for x in (vf.before_after(v), vf.new_phrase(v)) if x)
    if v.get("error"):
        rest = f"the changed copy failed to run: {v['error']}"
    if rest:
        line.append(f": {_t(rest)}")
    out = _wrap(console, line, width, indent=pad + 2, first=Text(" " * pad))
    out += _wrap(console, Text(f"changed: {_t(v['change'])}", style="dim"), width, indent=pad + 2,
                 first=Text(" " * (pad + 2)))
    return out


def training_lines(training: dict[str, Any], console: Console, width: int | None) -> list[Text]:
    """The rehearsal's trajectory: one sparkline per series (log scale, '!' for NaN/Inf)."""
    from gradcheck_cli.report import trajectory as tj

    head = Text("Training rehearsal", style="bold underline")
    head.append(f"  {tj.headline(training)}")
    lines = _wrap(console, head, width, indent=2)
    rows = tj.text_lines(training)
    w_label = max([0] + [len(label) for label, _, _ in rows])
    for label, spark, ends in rows:
        line = Text(f"{label:<{w_label}} ", style="dim")
        line.append(spark)
        lines += _wrap(console, Text(ends), width, indent=w_label + len(spark) + 2,
                       first=line + Text(" "))
    onsets = tj.onset_phrase(training)
    if onsets:
        lines += _wrap(console, Text(f"onset: {onsets}", style="dim"), width, indent=7)
    lines.append(Text())
    return lines
