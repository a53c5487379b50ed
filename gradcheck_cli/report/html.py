"""Self-contained HTML report: one file, inline CSS and SVG, no JavaScript, no external assets.

Per model: a verdict header, the per-layer gradient-flow chart (inline SVG, log scale, |∇W| vs |∂L/∂y|),
the findings with their evidence and fixes, suppressed findings, notes, settings and the layer table.
The charts are drawn by gradcheck_cli/report/html_charts.py; this module lays out the page and its tables.
Output is deterministic (no timestamps), so golden tests can compare it byte for byte.
"""

from __future__ import annotations

import re
from typing import Any, TextIO

from gradcheck_cli import __version__
from gradcheck_cli.findings import Finding, ModelError, Report, Suite
from gradcheck_cli.numbers import fmt
from gradcheck_cli.report import verification as vf
from gradcheck_cli.report.escape import html_text
from gradcheck_cli.report.html_charts import before_after_chart, chart, name_of, plural, positive, time_chart
from gradcheck_cli.report.view import LayerView, ReportView, build_view

MAX_ITEMS = 8          # list/dict items shown in evidence and settings before "… +N more"
_SETTING_LABELS = {"input_shape": "input shape", "fail_on": "fail-on", "timeout_s": "timeout (s)",
                   "rules": "rule settings"}

CSS = """
:root{--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--bg2:#f6f8fa;--red:#cf222e;--green:#1a7f37;--amber:#9a6700;
--blue:#0969da}
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
.chart-box,.table-box{overflow-x:auto;max-width:100%}.chart-box svg{display:block;max-width:none}
h1,h2,code{overflow-wrap:anywhere}.finding h4,.meta,.message{overflow-wrap:anywhere}
.finding{border:1px solid var(--line);border-left:6px solid var(--line);border-radius:4px;padding:.6rem 1rem;
margin:.8rem 0;break-inside:avoid}
.finding.severity-error{border-left-color:var(--red)}.finding.severity-warning{border-left-color:#d4a72c}
.finding.severity-info{border-left-color:var(--blue)}.finding h4{margin:0 0 .3rem;font-size:1rem}
.finding .message{margin:.3rem 0}.loc{color:var(--muted);font-weight:400}
.evidence td:first-child{color:var(--muted);white-space:nowrap}.evidence td{font-size:.9em}
.fixes li{margin:.2rem 0}
.verification{font-size:.9em;margin:.2rem 0 .4rem}
.verification.ok strong{color:#1a7f37}.verification.warn strong{color:#9a6700}.verification.bad strong{color:#cf222e}
.verification.none{opacity:.7}.verification .changed{opacity:.8}
svg.before-after{width:100%;max-width:360px;height:auto;font-size:9px}
svg.before-after text{fill:currentColor}
svg.before-after polyline.before{stroke:#8c959f;stroke-dasharray:4 3;stroke-width:1.5}
svg.before-after polyline.after{stroke:#1a7f37;stroke-width:2}
svg.before-after text.before{fill:#8c959f}svg.before-after text.after{fill:#1a7f37}
.suppressed{color:var(--muted)}.suppressed li{margin:.2rem 0}
.error-box{border:2px solid var(--red);background:#fff5f5;border-radius:4px;padding:.6rem 1rem}
.error-box dt{font-weight:700;float:left;clear:left;width:7rem}.error-box dd{margin:0 0 .2rem 7.5rem}
tr.flagged td{color:var(--red)}details summary{cursor:pointer;font-weight:600;margin:1rem 0 .4rem}
.baseline,.notes{color:var(--muted)}
@media (max-width:600px){body{padding:.6rem;font-size:14px}h1{font-size:1.25rem}
.error-box dt{float:none;width:auto}.error-box dd{margin-left:1rem}}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#9198a1;--line:#3d444d;--bg2:#151b23;--red:#ff7b72;
--green:#3fb950;--amber:#d29922;--blue:#58a6ff;color-scheme:dark}body{background:#0d1117}
.badge{color:#0d1117}.badge-error{background:#ff7b72;border-color:#ff7b72}.error-box{background:#2d1214}
svg.chart text{fill:var(--fg)}svg.chart text.flagged{fill:var(--red)}svg.chart .grid{stroke:#2a313a}
svg.chart .axis,svg.chart .separator{stroke:var(--muted)}svg.chart .hollow{fill:#0d1117}
svg.chart rect.flagged,svg.chart rect.legend-flagged{fill:#ff7b72;fill-opacity:.18}}
@media print{body{max-width:none;padding:0;font-size:11pt}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}.chart-box{overflow:visible}}
"""


def _e(x: Any) -> str:
    return html_text(x)


def _prose(text: Any) -> str:
    """Escaped text; `backticked` spans become <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))


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


def _badge(verdict: str) -> str:
    return f'<span class="badge badge-{_e(verdict)}">{_e(verdict.upper())}</span>'


def _counts(counts: dict[str, int], sep: str = " ") -> str:
    words = {"error": plural(counts["error"], "error"), "warning": plural(counts["warning"], "warning"),
             "info": f"{counts['info']} info"}
    return sep.join(f'<span class="sev-{k}{" zero" if not counts[k] else ""}">{words[k]}</span>' for k in words)


def _finding(f: Finding, n: int, layers: list[dict[str, Any]] | None = None) -> str:
    layers = layers or []
    sev = f.severity.value
    at = f' at <code>{_e(name_of(f.layer))}</code>' if f.layer is not None else ""
    loc = (f' <span class="loc">{_e(f.location["file"])}:{_e(f.location["line"])}</span>' if f.location else "")
    p = [f'<article class="finding severity-{sev}" id="finding-{_e(f.code)}-{n}">',
         f'<h4><span class="sev sev-{sev}">{sev.upper()}</span> <code>{_e(f.code)}</code> {_e(f.rule)}{at}{loc}</h4>',
         f'<p class="message">{_prose(f.message)}</p>']
    if f.evidence:
        rows = "".join(f"<tr><td>{_e(k)}</td><td class=\"mono\">{_e(_compact(v))}</td></tr>"
                       for k, v in f.evidence.items())
        p.append(f'<div class="table-box"><table class="evidence"><tbody>{rows}</tbody></table></div>')
    if f.fixes:
        checked = vf.by_fix(f.verification)
        p.append('<ol class="fixes">' + "".join(f"<li>{_prose(x)}{_verified(checked.get(i), layers)}</li>"
                                                for i, x in enumerate(f.fixes)) + "</ol>")
    p.append("</article>")
    return "\n".join(p)


def _verified(v: dict[str, Any] | None, layers: list[dict[str, Any]]) -> str:
    """--verify-fixes below a fix: the verdict with before -> after, what changed, and for a depth profile
    the chart of |dL/dy| per layer before and after the change."""
    if v is None:
        return ""
    if v.get("change") is None:
        return f'<div class="verification none">{_e(vf.headline(v))}</div>'
    cls = "ok" if v.get("resolved") and not v.get("new_findings") else ("warn" if v.get("resolved") else "bad")
    out = [f'<div class="verification {cls}"><strong>{_e(vf.headline(v))}</strong>',
           f'<div class="changed">changed: {_e(v["change"])}</div>']
    if isinstance(v.get("profile_after"), dict):
        out.append(before_after_chart(layers, v["profile_after"]))
    out.append("</div>")
    return "".join(out)


def _layer_notes(lv: LayerView) -> str:
    """The same notes as the terminal table (from the view), then the codes of the findings covering it."""
    return "; ".join([n.text for n in lv.notes] + ([", ".join(lv.codes)] if lv.codes else []))


def _blocks(view: ReportView) -> str:
    """Per repeated block (`transformer.h.3`, `layer2.1`): its layers, the norm of all its weight gradients
    together, and the range of |∂L/∂y| inside it. Comparing blocks avoids the norm-vs-linear zig-zag."""
    rows = []
    for b in view.blocks:
        members = view.layers[b.first:b.last + 1]
        og = [m.output_grad_norm for m in members if positive(m.output_grad_norm)]
        span = f"{fmt(min(og))} – {fmt(max(og))}" if og else "-"
        rows.append(f'<tr class="{"flagged" if b.codes else "block"}"><td><code>{_e(b.name)}</code></td>'
                    f'<td class="num">{len(members)}</td><td class="num">{_e(fmt(b.grad_norm))}</td>'
                    f'<td class="num">{_e(span)}</td><td>{_e(", ".join(b.codes))}</td></tr>')
    return (f'<details class="blocks" open><summary>Blocks ({len(view.blocks)})</summary><div class="table-box">'
            '<table class="block-table"><thead><tr><th>block</th><th>layers</th><th>|∇W| (all its weights)</th>'
            f'<th>|∂L/∂y| range</th><th>findings</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
            '</details>')


def _trainable(m: dict[str, Any]) -> str:
    same = m.get("trainable_parameters") == m.get("parameters")
    return "all trainable" if same else f"{fmt(m.get('trainable_parameters'))} trainable"


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
    return f'<div class="table-box"><table class="settings"><tbody>{body}</tbody></table></div>'


def render_report(report: Report, view: ReportView, idx: int, counter: list[int]) -> str:
    m = report.model
    src = m.get("source")
    where = f' <span class="loc">({_e(src["file"])}:{_e(src["line"])})</span>' if src else ""
    c = report.counts()
    p = [f'<section class="report" id="report-{idx}">',
         f'<header>{_badge(report.verdict)} <h2 class="spec"><code>{_e(m.get("spec"))}</code></h2>{where}',
         (f'<p class="meta">{_e(m.get("class"))} · {plural(len(report.layers), "layer")} measured · '
          f'{_e(fmt(m.get("parameters")))} parameters ({_e(_trainable(m))})'
          f'{" · " + _e(report.distribution) if report.distribution else ""}</p>'),
         (f'<p class="counts">{_counts(c)} <span>exit {report.exit_code}</span>'
         f' <span>fail-on {_e(report.fail_on.value)}</span></p></header>'),
         "<h3>Gradient flow</h3>", chart(report, view)]
    for lv in view.recurrent:
        p += [f"<h3>Gradient through time: <code>{_e(lv.display)}</code></h3>", time_chart(lv)]
    if report.training is not None:
        from gradcheck_cli.report.trajectory import html_section

        p.append(html_section(report.training))
    findings = report.active_findings()
    p.append(f"<h3>Findings ({len(findings)})</h3>")
    if not findings:
        p.append('<p class="meta">No findings: gradients look healthy.</p>')
    for f in findings:
        counter[0] += 1
        p.append(_finding(f, counter[0], report.layers))
    suppressed = report.suppressed_findings()
    if suppressed:
        items = "".join(
            f'<li class="suppressed-finding"><span class="sev">{f.severity.value.upper()}</span> '
            f'<code>{_e(f.code)}</code> '
            f'{_e(f.rule)}{" at <code>" + _e(name_of(f.layer)) + "</code>" if f.layer is not None else ""}: '
            f'{_prose(f.message)} <em>suppressed by {_e(f.suppressed["by"])}: {_e(f.suppressed["reason"])}</em></li>'
            for f in suppressed)
        p.append(f'<section class="suppressed"><h3>Suppressed ({len(suppressed)}, not counted toward the exit code)'
                 f'</h3><ul class="suppressed-list">{items}</ul></section>')
    if report.notes:
        p.append('<h3>Notes</h3><ul class="notes">' + "".join(f"<li>{_prose(x)}</li>" for x in report.notes) + "</ul>")
    p.append("<h3>Settings</h3>" + _settings(report))
    rows = "".join(
        f'<tr class="{"flagged" if lv.flagged else "layer"}"><td class="num">{_e(lv.index)}</td>'
        f'<td><code>{_e(lv.display)}</code></td><td>{_e(lv.type)}</td>'
        f'<td class="num">{_e(fmt(lv.grad_norm))}</td>'
        f'<td class="num">{_e(fmt(lv.output_grad_norm))}</td>'
        f'<td>{_e(_layer_notes(lv))}</td></tr>' for lv in view.layers)
    if view.blocks:
        p.append(_blocks(view))
    p.append(f'<details class="layers"><summary>Layers ({len(view.layers)})</summary><div class="table-box">'
             '<table class="layer-table">'
             '<thead><tr><th>#</th><th>layer</th><th>type</th><th>|∇W|</th><th>|∂L/∂y|</th><th>notes</th></tr>'
             f'</thead><tbody>{rows}</tbody></table></div></details>')
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
    return ('<div class="table-box"><table class="summary"><thead><tr><th>model</th><th>verdict</th><th>errors</th><th>warnings</th>'
            f'<th>info</th><th>suppressed</th><th>exit</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def render(suite: Suite, out: TextIO, *, views: list[ReportView] | None = None, **_: object) -> None:
    views = views if views is not None else [build_view(r) for r in suite.reports]
    models = len(suite.reports) + len(suite.errors)
    subject = (suite.reports[0].model.get("spec") if suite.reports else suite.errors[0].spec) if suite.single \
        else f"{models} models"
    p = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         f"<title>gradcheck: {_e(subject)} — {suite.verdict.upper()}</title>", f"<style>{CSS}</style>", "</head>",
         "<body>", f'<header class="top"><h1>gradcheck report {_badge(suite.verdict)}</h1>',
         (f'<p class="meta">gradcheck {_e(__version__)} · {plural(models, "model")} · '
         f'{_counts(suite.counts(), ", ")} · fail-on {_e(suite.fail_on.value)} · exit {suite.exit_code}</p></header>')]
    if suite.baseline is not None:
        b = suite.baseline
        line = (f"baseline <code>{_e(b.get('path'))}</code>: {plural(int(b.get('suppressed') or 0), 'finding')} "
                "suppressed (present in the baseline, not worse)")
        resolved = len(b.get("resolved") or [])
        if resolved:
            line += (f"; {resolved} baseline entr{'ies' if resolved != 1 else 'y'} no longer found "
                     "(re-run with --write-baseline to drop them)")
        p.append(f'<p class="baseline">{line}</p>')
    if not suite.single:
        p.append(_summary(suite))
    counter = [0]
    p += [render_report(r, v, i, counter) for i, (r, v) in enumerate(zip(suite.reports, views), 1)]
    p += [render_error(e, i) for i, e in enumerate(suite.errors, 1)]
    p += ["</body>", "</html>"]
    out.write("\n".join(p) + "\n")
