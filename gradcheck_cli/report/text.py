"""Terminal report (Rich): header, per-layer table with a log-scale gradient-flow bar, findings, verdict.

Readable at 80 columns; no colour codes when the output is not a terminal.
"""

from __future__ import annotations

import math
from typing import Any, TextIO

from rich.console import Console
from rich.padding import Padding
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from gradcheck_cli import __version__
from gradcheck_cli.findings import ModelError, Report, Severity, Suite
from gradcheck_cli.numbers import count_phrase
from gradcheck_cli.numbers import fmt as _fmt

BAR_WIDTH = 14
_PARTIAL = " ▏▎▍▌▋▊▉"
_SEV_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "bold yellow", Severity.INFO: "bold blue"}


def fmt(x: Any) -> str:
    return _fmt(x, sci_digits=1)


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def bar_scale(values: list[Any]) -> tuple[float, float]:
    """Log10 range [lo, hi] for the bars: whole decades, at least 4 decades wide."""
    vals = [v for v in values if _positive(v)]
    if not vals:
        return (0.0, 1.0)
    hi = math.ceil(math.log10(max(vals)) + 1e-9)
    lo = math.floor(math.log10(min(vals)))
    lo = min(lo, hi - 4)
    return (float(lo), float(hi))


def bar(value: Any, scale: tuple[float, float], width: int = BAR_WIDTH) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN/Inf".ljust(width)
    if not _positive(value):
        return "".ljust(width)
    lo, hi = scale
    frac = (math.log10(value) - lo) / (hi - lo)
    eighths = max(1, round(min(max(frac, 0.0), 1.0) * width * 8))
    full, part = divmod(eighths, 8)
    return ("█" * full + (_PARTIAL[part] if part else "")).ljust(width)


def _notes(layer: dict[str, Any], flagged: dict[str, list[str]]) -> str:
    parts = []
    sat = layer.get("saturated_fraction")
    if sat:
        parts.append(f"sat {100 * sat:.0f}%" if sat >= 0.005 else "sat <1%")
    if layer.get("dead_units"):
        parts.append(f"dead {layer['dead_units']}/{layer['units']}")
    if layer.get("nonfinite_outputs"):
        parts.append("NaN/Inf out")
    if layer.get("nonfinite_output_grads"):
        parts.append("NaN/Inf grad")
    if layer.get("time_steps"):
        key = "time_grad_min_max" if layer.get("bidirectional") else "time_grad_first_last"
        parts.append(f"T={layer['time_steps']} first/last {fmt(layer.get(key))}")
    if layer["name"] in flagged:
        parts.append("◀ " + ",".join(flagged[layer["name"]]))
    return " ".join(parts)


def _select_rows(layers: list[dict[str, Any]], flagged: set[str], max_rows: int) -> list[dict[str, Any] | None]:
    """All rows, or the first and last ones plus every flagged layer; None marks an elision."""
    if max_rows <= 0 or len(layers) <= max_rows:
        return list(layers)
    head = max_rows // 2
    tail = max_rows - head
    keep = set(range(head)) | set(range(len(layers) - tail, len(layers)))
    keep |= {i for i, l in enumerate(layers) if l["name"] in flagged}
    rows: list[dict[str, Any] | None] = []
    last = -1
    for i in sorted(keep):
        if i != last + 1:
            rows.append(None)
        rows.append(layers[i])
        last = i
    return rows


def layer_table(report: Report, max_rows: int) -> Table:
    flagged = report.flagged_layers()
    layers = report.layers
    scale = bar_scale([l.get("output_grad_norm") for l in layers])
    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold", show_edge=False)
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    table.add_column("layer", overflow="fold", min_width=10, ratio=3)
    table.add_column("type", overflow="ellipsis", no_wrap=True, max_width=12)
    table.add_column("|∇W|", justify="right", no_wrap=True)
    table.add_column("|∂L/∂y|", justify="right", no_wrap=True)
    table.add_column(f"flow 1e{scale[0]:+.0f}..1e{scale[1]:+.0f}", no_wrap=True, style="cyan",
                     min_width=BAR_WIDTH)
    table.add_column("notes", overflow="fold", ratio=2)
    rows = _select_rows(layers, set(flagged), max_rows)
    for layer in rows:
        if layer is None:
            table.add_row("", Text("…", style="dim"), "", "", "", "", "")
            continue
        style = "red" if layer["name"] in flagged else None
        table.add_row(
            str(layer["index"]), Text(layer["name"] or "(model)", style=style or ""), layer["type"],
            fmt(layer.get("grad_norm")), fmt(layer.get("output_grad_norm")),
            bar(layer.get("output_grad_norm"), scale), _notes(layer, flagged),
        )
    return table


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


def render(suite: Suite, out: TextIO, *, color: bool | None = None, width: int | None = None,
           max_rows: int = 40, **_: object) -> None:
    console = Console(file=out, width=width, force_terminal=color, no_color=(color is False),
                      highlight=False, soft_wrap=False, emoji=False)
    for i, report in enumerate(suite.reports):
        if i:
            console.print(Rule(style="dim"))
        render_report(report, console, max_rows)
    for e in suite.errors:
        if suite.reports or e is not suite.errors[0]:
            console.print(Rule(style="dim"))
        render_error(e, console)
    if suite.baseline is not None:
        b = suite.baseline
        line = Text(f"baseline {b['path']}: {b['suppressed']} finding{'s' if b['suppressed'] != 1 else ''} "
                    "suppressed (present in the baseline, not worse)", style="dim")
        if b["resolved"]:
            n = len(b["resolved"])
            line.append(f"; {n} baseline entr{'ies' if n != 1 else 'y'} no longer found "
                        "(re-run with --write-baseline to drop them)")
        console.print(line)
    if not suite.single:
        counts = suite.counts()
        total = Text()
        total.append({"pass": "✓ PASS", "fail": "✗ FAIL", "error": "✗ ERROR"}[suite.verdict],
                     style="bold red" if suite.exit_code else "bold green")
        n = len(suite.reports) + len(suite.errors)
        unchecked = f", {len(suite.errors)} could not be checked" if suite.errors else ""
        total.append(f"  {n} models{unchecked}: {count_phrase(counts)} (fail-on {suite.fail_on.value}) "
                     f"→ exit {suite.exit_code}")
        console.print(total)


def render_error(e: ModelError, console: Console) -> None:
    """A model that could not be checked: what went wrong, where, and what to do."""
    err = e.error
    head = Text()
    head.append(f"gradcheck {__version__}", style="bold")
    head.append(f"  {e.spec}")
    console.print(head)
    where = f" in {err['where']}" if err.get("where") else ""
    hint = f" ({err['hint']})" if err.get("hint") else ""
    line = Text()
    line.append("✗ ERROR", style="bold red")
    line.append(f"  {err['type']} error during {err['phase']}{where}: {err['message']}{hint} → exit {err['exit_code']}")
    console.print(line)


def render_report(report: Report, console: Console, max_rows: int = 40) -> None:
    m, s, t = report.model, report.settings, report.timings
    head = Text()
    head.append(f"gradcheck {report.tool_version}", style="bold")
    head.append(f"  {m['spec']}\n")
    head.append("model  ", style="dim")
    head.append(f"{m['class']}, {fmt(m['parameters'])} parameters ({fmt(m['trainable_parameters'])} trainable), "
                f"{m['layers_measured']} layers measured\n")
    head.append("batch  ", style="dim")
    head.append(f"{s['batch']}\n")
    head.append("loss   ", style="dim")
    head.append(f"{s['loss']}\n")
    head.append("run    ", style="dim")
    head.append(f"{s['steps']} steps, seed {s['seed']}, {s['device']}; "
                f"{t.get('total_s', 0):.2f} s (load {t.get('load_s', 0):.2f}, passes {t.get('passes_s', 0):.2f}, "
                f"analysis {t.get('analysis_s', 0):.2f})")
    console.print(head)
    console.print()
    if report.layers:
        console.print(layer_table(report, max_rows))
        console.print(Text("|∇W|: weight-gradient norm; |∂L/∂y|: gradient w.r.t. the layer's output; "
                           "flow: |∂L/∂y| on a log scale.", style="dim"))
        console.print()
    if report.training is not None:
        render_training(report.training, console)
    for note in report.notes:
        console.print(Text(f"note: {note}", style="yellow"))
    findings = report.active_findings()
    if findings:
        console.print(Text("Findings", style="bold underline"))
    for f in findings:
        line = Text()
        line.append(f"{f.severity.value.upper():7}", style=_SEV_STYLE[f.severity])
        line.append(f" {f.code} {f.rule}", style="bold")
        if f.layer is not None:
            line.append(f" at {f.layer or '(model)'}")
        if f.location:
            line.append(f" ({f.location['file']}:{f.location['line']})", style="dim")
        console.print(line)
        grid = Table.grid(padding=(0, 1), pad_edge=False)
        grid.add_column(no_wrap=True, style="dim", min_width=8)
        grid.add_column(overflow="fold")
        grid.add_row("", Text(f.message))
        if f.evidence:
            grid.add_row("evidence", Text(_evidence_line(f.evidence), style="dim"))
        for i, fix in enumerate(f.fixes, 1):
            grid.add_row(f"fix {i}", Text(fix, style="green"))
        console.print(Padding(grid, (0, 0, 0, 2)))
        console.print()
    suppressed = report.suppressed_findings()
    if suppressed:
        console.print(Text("Suppressed (not counted toward the exit code)", style="bold underline"))
        for f in suppressed:
            line = Text()
            line.append(f"{f.severity.value.upper():7}", style="dim")
            line.append(f" {f.code} {f.rule}" + (f" at {f.layer or '(model)'}" if f.layer is not None else ""))
            line.append(f": {f.suppressed['by']}, {f.suppressed['reason']}", style="dim")
            console.print(line)
        console.print()
    summary = count_phrase(report.counts(), len(suppressed))
    verdict = Text()
    if report.verdict == "fail":
        verdict.append("✗ FAIL", style="bold red")
    else:
        verdict.append("✓ PASS", style="bold green")
    verdict.append(f"  {summary} (fail-on {report.fail_on.value}) → exit {report.exit_code}")
    console.print(verdict)


def render_training(training: dict[str, Any], console: Console) -> None:
    """The rehearsal's trajectory: one sparkline per series (log scale, '!' for NaN/Inf)."""
    from gradcheck_cli.report import trajectory as tj

    console.print(Text("Training rehearsal", style="bold underline") + Text(f"  {tj.headline(training)}"))
    grid = Table.grid(padding=(0, 1), pad_edge=False)
    grid.add_column(no_wrap=True, style="dim")
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for label, line, ends in tj.text_lines(training):
        grid.add_row(label, line, ends)
    console.print(grid)
    onsets = tj.onset_phrase(training)
    if onsets:
        console.print(Text(f"onset: {onsets}", style="dim"))
    console.print()
