"""A compact Markdown summary for pull-request comments and $GITHUB_STEP_SUMMARY.

The verdict and counts first, then one table row per finding, the fixes folded in <details>; suppressed
findings are listed, not counted. Several models get a one-row-per-model table on top.
"""

from __future__ import annotations

from typing import TextIO

from gradcheck_cli.findings import Finding, ModelError, Report, Severity, Suite
from gradcheck_cli.numbers import count_phrase, fmt, plural
from gradcheck_cli.report import escape
from gradcheck_cli.report import verification as vf
from gradcheck_cli.report.text import run_detail

ICONS = {Severity.ERROR: "🔴", Severity.WARNING: "🟡", Severity.INFO: "🔵"}
VERDICT = {"pass": "✅ PASS", "fail": "❌ FAIL", "error": "⛔ ERROR"}


cell = escape.md_text    # safe inside a table cell: one line, pipes escaped, no HTML, no links
code = escape.md_code    # `inline code` that stays in its cell


def _where(f: Finding) -> str:
    layer = code(f.layer or "(model)") if f.layer is not None else "—"
    if f.location:
        layer += f" ({cell(f.location['file'])}:{f.location['line']})"
    return layer


def _report(report: Report, out: list[str], level: str) -> None:
    m, s = report.model, report.settings
    out.append(f"{level} {VERDICT[report.verdict]} {code(m['spec'])}")
    out.append("")
    out.append(f"{cell(m['class'])}, {plural(m['layers_measured'], 'layer')} measured, {fmt(m['parameters'])} parameters · "
               f"{plural(s['steps'], 'step')}, {run_detail(s)}, {cell(s['device'])}"
               f"{', ' + cell(report.distribution) if report.distribution else ''} · "
               f"{count_phrase(report.counts(), len(report.suppressed_findings()))} · fail-on {report.fail_on.value} "
               f"→ exit {report.exit_code}")
    out.append("")
    if report.training is not None:
        from gradcheck_cli.report.trajectory import markdown_lines

        out += markdown_lines(report.training)
    active = report.active_findings()
    if active:
        out.append("| | Rule | Layer | Finding |")
        out.append("|---|---|---|---|")
        for f in active:
            out.append(f"| {ICONS[f.severity]} {f.severity.value} | {f.code} {code(f.rule)} | {_where(f)} | "
                       f"{cell(f.message)} |")
        out.append("")
        out.append("<details><summary>Suggested fixes</summary>")
        out.append("")
        for f in active:
            out.append(f"**{f.code} {cell(f.rule)}**" + (f" at {code(f.layer or '(model)')}" if f.layer is not None
                                                           else ""))
            out.append("")
            checked = vf.by_fix(f.verification)
            for i, x in enumerate(f.fixes, 1):
                v = checked.get(i - 1)
                out.append(f"{i}. {cell(x)}" + (f"<br>{escape.md_text(vf.one_line(v))}" if v is not None else ""))
            out.append("")
        out.append("</details>")
        out.append("")
    else:
        out.append("No gradient problems found.")
        out.append("")
    suppressed = report.suppressed_findings()
    if suppressed:
        out.append("<details><summary>Suppressed (not counted)</summary>")
        out.append("")
        out += [f"- {f.severity.value} {f.code} {code(f.rule)} at {_where(f)}: {f.suppressed['by']}, "
                f"{cell(f.suppressed['reason'])}" for f in suppressed]
        out.append("")
        out.append("</details>")
        out.append("")
    for note in report.notes:
        out.append(f"> note: {cell(note)}")
        out.append("")


def _error(e: ModelError, out: list[str], level: str) -> None:
    err = e.error
    out.append(f"{level} {VERDICT['error']} {code(e.spec)}")
    out.append("")
    where = f" in {code(err['where'])}" if err.get("where") else ""
    out.append(f"{cell(err['type'])} error during {cell(err['phase'])}{where}: {cell(err['message'])}"
               + (f" ({cell(err['hint'])})" if err.get("hint") else "") + f" → exit {err['exit_code']}")
    out.append("")


def render(suite: Suite, out: TextIO, **_: object) -> None:
    lines: list[str] = []
    if suite.single:
        lines.append("## gradcheck")
        lines.append("")
        level = "###"
    else:
        suppressed = sum(1 for f in suite.findings() if not f.active)
        lines.append(f"## gradcheck {VERDICT[suite.verdict]}")
        lines.append("")
        lines.append(f"{len(suite.reports) + len(suite.errors)} models · {count_phrase(suite.counts(), suppressed)} · "
                     f"fail-on {suite.fail_on.value} → exit {suite.exit_code}")
        lines.append("")
        lines.append("| Model | Verdict | Errors | Warnings | Info |")
        lines.append("|---|---|---|---|---|")
        for r in suite.reports:
            c = r.counts()
            lines.append(f"| {code(r.model['spec'])} | {VERDICT[r.verdict]} | {c['error']} | {c['warning']} | "
                         f"{c['info']} |")
        for e in suite.errors:
            lines.append(f"| {code(e.spec)} | {VERDICT['error']} (exit {e.exit_code}) | | | |")
        lines.append("")
        level = "###"
    for r in suite.reports:
        _report(r, lines, level)
    for e in suite.errors:
        _error(e, lines, level)
    if suite.baseline is not None:
        b = suite.baseline
        lines.append(f"Baseline {code(b['path'])}: {plural(b['suppressed'], 'known finding')} suppressed"
                     + (f"; {len(b['resolved'])} baseline entr{'ies' if len(b['resolved']) != 1 else 'y'} "
                        "no longer found" if b["resolved"] else "") + ".")
        lines.append("")
    out.write("\n".join(lines).rstrip("\n") + "\n")
