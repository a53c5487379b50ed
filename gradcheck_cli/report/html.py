"""Self-contained HTML report: one file, inline CSS and SVG, no JavaScript, no external assets.

Per model: a verdict header, the per-layer gradient-flow chart (inline SVG, log scale, |∇W| vs |∂L/∂y|),
the findings with their evidence and fixes, suppressed findings, notes, settings and the layer table.
Output is deterministic (no timestamps), so golden tests can compare it byte for byte.
"""

from __future__ import annotations

import math
import re
from html import escape
from typing import Any, TextIO

from gradcheck_cli import __version__
from gradcheck_cli.findings import Finding, ModelError, Report, Suite
from gradcheck_cli.numbers import fmt

MAX_X_LABELS = 40
MAX_ITEMS = 8          # list/dict items shown in evidence and settings before "… +N more"
SERIES = (("weight", "grad_norm", "|∇W|", "weight-gradient norm"),
          ("output", "output_grad_norm", "|∂L/∂y|", "output-gradient norm"))
_SETTING_LABELS = {"input_shape": "input shape", "fail_on": "fail-on", "timeout_s": "timeout (s)",
                   "rules": "rule settings"}

CSS = """
:root{--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--bg2:#f6f8fa;--red:#cf222e;--green:#1a7f37;--amber:#9a6700;
--blue:#0969da;--w:#1f6feb;--o:#d4760a}
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:#fff;
max-width:1100px;margin:0 auto;padding:1.5rem}
h1{font-size:1.5rem;margin:0 0 .5rem}h2{font-size:1.25rem;margin:.2rem 0}h2.spec{display:inline;margin-left:.4rem}
h3{font-size:1.05rem;margin:1.4rem 0 .5rem}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}
code{background:var(--bg2);padding:0 .25em;border-radius:3px}
table{border-collapse:collapse;margin:.4rem 0}th,td{border:1px solid var(--line);padding:.2rem .5rem;
text-align:left;vertical-align:top}th{background:var(--bg2)}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;font-weight:700;padding:.1rem .6rem;border-radius:4px;color:#fff;border:2px solid}
.badge-pass{background:var(--green);border-color:var(--green)}.badge-fail{background:var(--red);border-color:var(--red)}
.badge-error{background:#82071e;border-color:#82071e}
.report,.model-error{border-top:3px solid var(--line);margin-top:2rem;padding-top:1rem}
.meta{color:var(--muted);margin:.2rem 0}.counts span{margin-right:.8rem}
.sev{font-weight:700;font-size:.8rem;padding:0 .4rem;border-radius:3px;border:1px solid}
.sev-error{color:var(--red)}.sev-warning{color:var(--amber)}.sev-info{color:var(--blue)}.zero{color:var(--muted)}
.chart-box{overflow-x:auto}.chart{max-width:100%;height:auto;display:block}
.chart text{font-size:11px;fill:var(--fg)}.chart .grid{stroke:#e6e9ed}.chart .axis{stroke:var(--muted)}
.chart text.flagged{fill:var(--red);font-weight:700}.chart rect.flagged{fill:var(--red);opacity:.12}
.chart .nonfinite{fill:var(--red);stroke:#fff}
.chart polyline{fill:none;stroke-width:2}.chart .series-weight polyline{stroke:var(--w)}
.chart .series-output polyline{stroke:var(--o);stroke-dasharray:6 3}
.chart .series-weight circle{fill:var(--w)}.chart .series-output circle{fill:#fff;stroke:var(--o);stroke-width:1.5}
.legend-weight{stroke:var(--w);fill:var(--w);stroke-width:2}
.legend-output{stroke:var(--o);fill:#fff;stroke-width:2;stroke-dasharray:6 3}
.finding{border:1px solid var(--line);border-left:6px solid var(--line);border-radius:4px;padding:.6rem 1rem;
margin:.8rem 0;break-inside:avoid}
.finding.severity-error{border-left-color:var(--red)}.finding.severity-warning{border-left-color:#d4a72c}
.finding.severity-info{border-left-color:var(--blue)}.finding h4{margin:0 0 .3rem;font-size:1rem}
.finding .message{margin:.3rem 0}.loc{color:var(--muted);font-weight:400}
.evidence td:first-child{color:var(--muted);white-space:nowrap}.evidence td{font-size:.9em}
.fixes li{margin:.2rem 0}
.suppressed{color:var(--muted)}.suppressed li{margin:.2rem 0}
.error-box{border:2px solid var(--red);background:#fff5f5;border-radius:4px;padding:.6rem 1rem}
.error-box dt{font-weight:700;float:left;clear:left;width:7rem}.error-box dd{margin:0 0 .2rem 7.5rem}
tr.flagged td{color:var(--red)}details summary{cursor:pointer;font-weight:600;margin:1rem 0 .4rem}
.baseline,.notes{color:var(--muted)}
@media print{body{max-width:none;padding:0;font-size:11pt}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}.chart-box{overflow:visible}}
"""


def _e(x: Any) -> str:
    return escape(str(x), quote=True)


def _prose(text: Any) -> str:
    """Escaped text; `backticked` spans become <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _nonfinite(v: Any) -> bool:
    return (isinstance(v, float) and not math.isfinite(v)) or v in ("NaN", "Infinity", "-Infinity")


def _compact(v: Any) -> str:
    """Plain text for nested values: numbers via fmt, long lists and dicts truncated."""
    if isinstance(v, dict):
        items = list(v.items())
        more = f", … +{len(items) - MAX_ITEMS} more" if len(items) > MAX_ITEMS else ""
        return "{" + ", ".join(f"{k}: {_compact(x)}" for k, x in items[:MAX_ITEMS]) + more + "}"
    if isinstance(v, (list, tuple)):
        more = f", … +{len(v) - MAX_ITEMS} more" if len(v) > MAX_ITEMS else ""
        return "[" + ", ".join(_compact(x) for x in v[:MAX_ITEMS]) + more + "]"
    return fmt(v)


def _name(layer: str | None) -> str:
    return "(model)" if layer == "" else str(layer)


def _badge(verdict: str) -> str:
    return f'<span class="badge badge-{_e(verdict)}">{_e(verdict.upper())}</span>'


def _counts(counts: dict[str, int]) -> str:
    words = {"error": _plural(counts["error"], "error"), "warning": _plural(counts["warning"], "warning"),
             "info": f"{counts['info']} info"}
    return "".join(f'<span class="sev-{k}{" zero" if not counts[k] else ""}">{words[k]}</span>' for k in words)


def _flagged(report: Report) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in report.active_findings():
        if f.layer is not None and f.code not in out.setdefault(f.layer, []):
            out[f.layer].append(f.code)
    return out


def chart(report: Report, flagged: dict[str, list[str]]) -> str:
    """Inline SVG: one x slot per layer (depth order), log10 y with decade gridlines, both norms per layer."""
    layers = report.layers
    n = len(layers)
    if not n:
        return '<p class="no-chart">No layers were measured, so there is no gradient-flow chart.</p>'
    logs = [math.log10(lv[k]) for lv in layers for _, k, _, _ in SERIES if _positive(lv.get(k))]
    hi = math.ceil(max(logs) - 1e-9) if logs else 0
    lo = min(math.floor(min(logs)) if logs else hi, hi - 4)
    longest = max(len(_name(layers[i]["name"])) for i in range(0, n, math.ceil(n / MAX_X_LABELS)))
    left, top, pw, ph = max(64, 6 + 5 * min(longest, 18)), 44, min(max(n * 24, 560), 1600), 240
    bottom = 44 + 5 * min(longest, 18)
    width, height = left + pw + 16, top + ph + bottom
    dx = pw / n
    r = f"{min(3.0, max(1.2, dx / 3)):.1f}"   # smaller markers when layers are dense

    def x(i: int) -> float:
        return left + (i + 0.5) * dx

    def y(v: float) -> float:
        return top + ph * (hi - math.log10(v)) / (hi - lo)

    label = (f"Gradient flow for {report.model.get('spec')}: weight-gradient norm and output-gradient norm "
             f"for {_plural(n, 'layer')} in depth order, log scale from 1e{lo} to 1e{hi}")
    p = [(f'<div class="chart-box"><svg class="chart" role="img" aria-label="{_e(label)}" '
         f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">')]
    for i, lv in enumerate(layers):
        if lv["name"] in flagged:
            w = max(dx, 2.0)
            p.append(f'<rect class="flagged" x="{x(i) - w / 2:.1f}" y="{top}" width="{w:.1f}" height="{ph}">'
                     f'<title>{_e(_name(lv["name"]))}: {_e(", ".join(flagged[lv["name"]]))}</title></rect>')
    step = max(1, math.ceil((hi - lo) / 12))
    for d in range(hi, lo - 1, -step):
        yy = top + ph * (hi - d) / (hi - lo)
        p.append(f'<line class="grid" x1="{left}" y1="{yy:.1f}" x2="{left + pw}" y2="{yy:.1f}"/>'
                 f'<text class="ylabel" x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">1e{d}</text>')
    p.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}"/>'
             f'<line class="axis" x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}"/>')
    p.append(f'<text x="14" y="{top + ph / 2:.0f}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2:.0f})">'
             'gradient norm (log scale)</text>')
    p.append(f'<text x="{left + pw / 2:.0f}" y="{height - 6}" text-anchor="middle">layers in depth order →</text>')
    k = math.ceil(n / MAX_X_LABELS)
    for i in range(0, n, k):
        name = _name(layers[i]["name"])
        short = name if len(name) <= 18 else "…" + name[-17:]
        cls = "xlabel flagged" if layers[i]["name"] in flagged else "xlabel"
        yy = top + ph + 12
        p.append(f'<text class="{cls}" x="{x(i):.1f}" y="{yy}" text-anchor="end" '
                 f'transform="rotate(-40 {x(i):.1f} {yy})"><title>{_e(name)}</title>{_e(short)}</text>')
    bad: list[str] = []
    for s, (cls, key, sym, _) in enumerate(SERIES):
        segs: list[list[str]] = [[]]
        marks: list[str] = []
        for i, lv in enumerate(layers):
            v = lv.get(key)
            if _positive(v):
                segs[-1].append(f"{x(i):.1f},{y(v):.1f}")
                marks.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="{r}">'
                             f'<title>{_e(_name(lv["name"]))}: {sym} {_e(fmt(v))}</title></circle>')
                continue
            if v is None and key == "grad_norm" and not lv.get("trainable_params"):
                continue   # no weights of its own: nothing to measure, the line runs on
            segs.append([])
            if _nonfinite(v):
                yy = top + 2 + 10 * s
                bad.append(f'<path class="nonfinite nonfinite-{cls}" d="M{x(i):.1f},{yy} l5,9 h-10 z">'
                           f'<title>{_e(_name(lv["name"]))}: {sym} {_e(fmt(v))}</title></path>')
        lines = "".join(f'<polyline points="{" ".join(seg)}"/>' for seg in segs if len(seg) > 1)
        p.append(f'<g class="series-{cls}">{lines}{"".join(marks)}</g>')
    p.append(f'<g class="nonfinite-markers">{"".join(bad)}</g>')
    lx, ly = left, 12
    p.append('<g class="legend">')
    for cls, _, sym, words in SERIES:
        p.append(f'<line class="legend-{cls}" x1="{lx}" y1="{ly}" x2="{lx + 24}" y2="{ly}"/>'
                 f'<circle class="legend-{cls}" cx="{lx + 12}" cy="{ly}" r="3"/>'
                 f'<text x="{lx + 30}" y="{ly + 4}">{sym} {words}</text>')
        lx += 220
    lx, ly = left, 30
    p.append(f'<path class="nonfinite" d="M{lx + 12},{ly - 5} l5,9 h-10 z"/><text x="{lx + 30}" y="{ly + 4}">NaN/Inf'
             f'</text><rect class="flagged" x="{lx + 90}" y="{ly - 6}" width="24" height="12"/>'
             f'<text x="{lx + 120}" y="{ly + 4}">layer with a finding</text></g></svg></div>')
    return "\n".join(p)


def _finding(f: Finding, n: int) -> str:
    sev = f.severity.value
    at = f' at <code>{_e(_name(f.layer))}</code>' if f.layer is not None else ""
    loc = (f' <span class="loc">{_e(f.location["file"])}:{_e(f.location["line"])}</span>' if f.location else "")
    p = [f'<article class="finding severity-{sev}" id="finding-{_e(f.code)}-{n}">',
         f'<h4><span class="sev sev-{sev}">{sev.upper()}</span> <code>{_e(f.code)}</code> {_e(f.rule)}{at}{loc}</h4>',
         f'<p class="message">{_prose(f.message)}</p>']
    if f.evidence:
        rows = "".join(f"<tr><td>{_e(k)}</td><td class=\"mono\">{_e(_compact(v))}</td></tr>"
                       for k, v in f.evidence.items())
        p.append(f'<table class="evidence"><tbody>{rows}</tbody></table>')
    if f.fixes:
        p.append('<ol class="fixes">' + "".join(f"<li>{_prose(x)}</li>" for x in f.fixes) + "</ol>")
    p.append("</article>")
    return "\n".join(p)


def _layer_notes(lv: dict[str, Any], flagged: dict[str, list[str]]) -> str:
    parts = []
    sat = lv.get("saturated_fraction")
    if sat:
        parts.append(f"saturated {100 * sat:.0f}%" if sat >= 0.005 else "saturated <1%")
    if lv.get("dead_units"):
        parts.append(f"dead {lv['dead_units']}/{lv.get('units')}")
    if lv.get("nonfinite_outputs"):
        parts.append("NaN/Inf output")
    if lv.get("nonfinite_output_grads") or lv.get("nonfinite_param_grads"):
        parts.append("NaN/Inf gradient")
    if lv["name"] in flagged:
        parts.append(", ".join(flagged[lv["name"]]))
    return "; ".join(parts)


def _settings(report: Report) -> str:
    rows = []
    for k, v in report.settings.items():
        if k == "rules" and isinstance(v, dict):
            v = "; ".join(f"{rid}: {_compact(opts)}" for rid, opts in v.items()) or "defaults"
        rows.append((_SETTING_LABELS.get(k, k), "none" if v is None else _compact(v)))
    run = report.run
    if run.get("losses") is not None:
        rows.append(("losses", _compact(run["losses"])))
    if run.get("total_grad_norm") is not None:
        total = f"{fmt(run['total_grad_norm'])} / {fmt(run.get('total_grad_norm_max'))}"
        rows.append(("total |∇| (mean / max)", total))
    if report.timings:
        rows.append(("timings", ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in report.timings.items())))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="settings"><tbody>{body}</tbody></table>'


def render_report(report: Report, idx: int, counter: list[int]) -> str:
    m = report.model
    flagged = _flagged(report)
    src = m.get("source")
    where = f' <span class="loc">({_e(src["file"])}:{_e(src["line"])})</span>' if src else ""
    c = report.counts()
    p = [f'<section class="report" id="report-{idx}">',
         f'<header>{_badge(report.verdict)} <h2 class="spec"><code>{_e(m.get("spec"))}</code></h2>{where}',
         (f'<p class="meta">{_e(m.get("class"))} · {_e(fmt(m.get("parameters")))} parameters '
         f'({_e(fmt(m.get("trainable_parameters")))} trainable) · '
         f'{_plural(len(report.layers), "layer")} measured</p>'),
         (f'<p class="counts">{_counts(c)}<span>exit {report.exit_code}</span>'
         f'<span>fail-on {_e(report.fail_on.value)}</span></p></header>'),
         "<h3>Gradient flow</h3>", chart(report, flagged)]
    findings = report.active_findings()
    p.append(f"<h3>Findings ({len(findings)})</h3>")
    if not findings:
        p.append('<p class="meta">No findings: gradients look healthy.</p>')
    for f in findings:
        counter[0] += 1
        p.append(_finding(f, counter[0]))
    suppressed = report.suppressed_findings()
    if suppressed:
        items = "".join(
            f'<li class="suppressed-finding"><span class="sev">{f.severity.value.upper()}</span> '
            f'<code>{_e(f.code)}</code> '
            f'{_e(f.rule)}{" at <code>" + _e(_name(f.layer)) + "</code>" if f.layer is not None else ""}: '
            f'{_prose(f.message)} <em>suppressed by {_e(f.suppressed["by"])}: {_e(f.suppressed["reason"])}</em></li>'
            for f in suppressed)
        p.append(f'<section class="suppressed"><h3>Suppressed ({len(suppressed)}, not counted toward the exit code)'
                 f'</h3><ul class="suppressed-list">{items}</ul></section>')
    if report.notes:
        p.append('<h3>Notes</h3><ul class="notes">' + "".join(f"<li>{_prose(x)}</li>" for x in report.notes) + "</ul>")
    p.append("<h3>Settings</h3>" + _settings(report))
    rows = "".join(
        f'<tr class="{"flagged" if lv["name"] in flagged else "layer"}"><td class="num">{_e(lv.get("index"))}</td>'
        f'<td><code>{_e(_name(lv["name"]))}</code></td><td>{_e(lv.get("type"))}</td>'
        f'<td class="num">{_e(fmt(lv.get("grad_norm")))}</td>'
        f'<td class="num">{_e(fmt(lv.get("output_grad_norm")))}</td>'
        f'<td>{_e(_layer_notes(lv, flagged))}</td></tr>' for lv in report.layers)
    p.append(f'<details class="layers"><summary>Layers ({len(report.layers)})</summary><table class="layer-table">'
             '<thead><tr><th>#</th><th>layer</th><th>type</th><th>|∇W|</th><th>|∂L/∂y|</th><th>notes</th></tr>'
             f'</thead><tbody>{rows}</tbody></table></details>')
    p.append("</section>")
    return "\n".join(p)


def render_error(e: ModelError, idx: int) -> str:
    err = e.error
    fields = [("type", err.get("type")), ("phase", err.get("phase")), ("message", err.get("message")),
              ("where", err.get("where")), ("hint", err.get("hint")), ("exit code", err.get("exit_code"))]
    dl = "".join(f"<dt>{k}</dt><dd>{_prose(v)}</dd>" for k, v in fields if v not in (None, ""))
    return (f'<section class="model-error" id="error-{idx}"><header>{_badge("error")} <h2 class="spec">'
            f'<code>{_e(e.spec)}</code></h2></header><div class="error-box"><p>This model could not be checked.</p>'
            f"<dl>{dl}</dl></div></section>")


def _summary(suite: Suite) -> str:
    rows = []
    for i, r in enumerate(suite.reports, 1):
        c = r.counts()
        rows.append(f'<tr><td><a href="#report-{i}"><code>{_e(r.model.get("spec"))}</code></a></td>'
                    f'<td>{_badge(r.verdict)}</td><td class="num">{c["error"]}</td><td class="num">{c["warning"]}</td>'
                    f'<td class="num">{c["info"]}</td><td class="num">{len(r.suppressed_findings())}</td>'
                    f'<td class="num">{r.exit_code}</td></tr>')
    for i, e in enumerate(suite.errors, 1):
        rows.append(f'<tr><td><a href="#error-{i}"><code>{_e(e.spec)}</code></a></td><td>{_badge("error")}</td>'
                    f'<td colspan="4">{_e(e.error.get("type"))} error during {_e(e.error.get("phase"))}</td>'
                    f'<td class="num">{_e(e.exit_code)}</td></tr>')
    return ('<table class="summary"><thead><tr><th>model</th><th>verdict</th><th>errors</th><th>warnings</th>'
            f'<th>info</th><th>suppressed</th><th>exit</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def render(suite: Suite, out: TextIO, **_: object) -> None:
    models = len(suite.reports) + len(suite.errors)
    subject = (suite.reports[0].model.get("spec") if suite.reports else suite.errors[0].spec) if suite.single \
        else f"{models} models"
    p = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         f"<title>gradcheck: {_e(subject)} — {suite.verdict.upper()}</title>", f"<style>{CSS}</style>", "</head>",
         "<body>", f'<header class="top"><h1>gradcheck report {_badge(suite.verdict)}</h1>',
         (f'<p class="meta">gradcheck {_e(__version__)} · {_plural(models, "model")} · '
         f'{_counts(suite.counts())} · fail-on {_e(suite.fail_on.value)} · exit {suite.exit_code}</p></header>')]
    if suite.baseline is not None:
        b = suite.baseline
        line = (f"baseline <code>{_e(b.get('path'))}</code>: {_plural(int(b.get('suppressed') or 0), 'finding')} "
                "suppressed (present in the baseline, not worse)")
        resolved = len(b.get("resolved") or [])
        if resolved:
            line += (f"; {resolved} baseline entr{'ies' if resolved != 1 else 'y'} no longer found "
                     "(re-run with --write-baseline to drop them)")
        p.append(f'<p class="baseline">{line}</p>')
    if not suite.single:
        p.append(_summary(suite))
    counter = [0]
    p += [render_report(r, i, counter) for i, r in enumerate(suite.reports, 1)]
    p += [render_error(e, i) for i, e in enumerate(suite.errors, 1)]
    p += ["</body>", "</html>"]
    out.write("\n".join(p) + "\n")
