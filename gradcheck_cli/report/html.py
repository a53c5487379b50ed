"""Self-contained HTML report: one file, inline CSS and SVG, no JavaScript, no external assets.

Per model: a verdict header, the per-layer gradient-flow chart (inline SVG, log scale, |∇W| vs |∂L/∂y|),
the findings with their evidence and fixes, suppressed findings, notes, settings and the layer table.
Output is deterministic (no timestamps), so golden tests can compare it byte for byte.
"""

from __future__ import annotations

import math
import re
from gradcheck_cli.report.escape import html_text
from typing import Any, TextIO

from gradcheck_cli import __version__
from gradcheck_cli.findings import Finding, ModelError, Report, Suite
from gradcheck_cli.numbers import fmt
from gradcheck_cli.report import verification as vf
from gradcheck_cli.report.view import KIND_LABELS, LayerView, ReportView, build_view

MAX_X_LABELS = 40
MAX_CHART_WIDTH = 1040   # fits the page's 1052px content box, so the chart is never shrunk on a desktop screen
FONT_PX = 11
CHAR_PX = 6.6            # generous width of one character at FONT_PX (for layout: labels and legend never touch)
LABEL_CHARS = 20         # x-axis labels longer than this are shortened from the left, at a dot
MAX_ITEMS = 8          # list/dict items shown in evidence and settings before "… +N more"
SERIES = (("weight", "grad_norm", "|∇W|", "weight-gradient norm"),
          ("output", "output_grad_norm", "|∂L/∂y|", "output-gradient norm"))
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


def _counts(counts: dict[str, int], sep: str = " ") -> str:
    words = {"error": _plural(counts["error"], "error"), "warning": _plural(counts["warning"], "warning"),
             "info": f"{counts['info']} info"}
    return sep.join(f'<span class="sev-{k}{" zero" if not counts[k] else ""}">{words[k]}</span>' for k in words)


# Chart colours, drawn as SVG presentation attributes (not CSS) so the chart looks the same in every renderer:
# browsers, an SVG copied out of the page, PDF converters and SVG rasterisers that ignore or only partly
# support the page's stylesheet. Blue/orange stay apart under the common colour-vision deficiencies; the two
# series also differ by line (solid / dashed) and marker (filled / hollow), so they survive grey-scale printing.
INK, MUTED, GRID, RED, BLUE, ORANGE = "#1f2328", "#656d76", "#e6e9ed", "#cf222e", "#1f6feb", "#d4760a"
_LINE = {"weight": f'stroke="{BLUE}" stroke-width="2"',
         "output": f'stroke="{ORANGE}" stroke-width="2" stroke-dasharray="6 3"'}
# |∇W| per layer kind, when a model mixes kinds (norm layers' weight gradients are far smaller than linear
# layers', so one line through both zig-zags): colour and dash per kind.
KIND_STYLE = {"linear": (BLUE, ""), "norm": ("#1a7f37", ' stroke-dasharray="2 2"'),
              "embedding": ("#8250df", ' stroke-dasharray="8 2 2 2"'), "recurrent": ("#bf3989", ' stroke-dasharray="6 2"'),
              "other": ("#6e7781", ' stroke-dasharray="4 2"')}
_FONTS = "system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',Arial,sans-serif"


def _suffix(parts: list[str], room: int) -> str:
    """The longest run of trailing dot-separated parts that fits in `room` characters ('' if none)."""
    tail = ""
    for j in range(len(parts) - 1, -1, -1):
        if len(".".join(parts[j:])) > room:
            break
        tail = ".".join(parts[j:])
    return tail


def _short(name: str) -> str:
    """An x-axis label: the name, or its last dot-separated parts behind '…', keeping the block index when the
    parts that fit have none ('blocks.0.attention.output.dense' → '0…output.dense'); the tooltip has it all."""
    if len(name) <= LABEL_CHARS:
        return name
    parts = name.split(".")
    tail = _suffix(parts, LABEL_CHARS - 1)
    index = [q for q in parts[:-1] if q.isdigit()]
    if index and not any(c.isdigit() for c in tail):
        rest = _suffix(parts, LABEL_CHARS - 1 - len(index[-1]))
        if rest:
            return f"{index[-1]}…{rest}"
    return "…" + (tail or name[-(LABEL_CHARS - 1):])


def _hollow(extra: str) -> str:
    """Add the class `hollow` (dark theme: the ring's inside follows the page background)."""
    return extra.replace('class="', 'class="hollow ', 1) if 'class="' in extra else extra + ' class="hollow"'


def _marker(cls: str, cx: float, cy: float, r: float, extra: str = "", title: str = "", colour: str = BLUE) -> str:
    """A series marker: |∇W| a filled dot (blue, or its layer kind's colour), |∂L/∂y| a larger hollow orange
    ring (visible around a coinciding dot, since the weight series is drawn on top)."""
    if cls != "weight":
        extra = _hollow(extra)
    paint = (f'r="{r:.1f}" fill="{colour}"' if cls == "weight" else
             f'r="{r + 0.8:.1f}" fill="#fff" stroke="{ORANGE}" stroke-width="1.5"')
    tip = f"<title>{title}</title>" if title else ""
    return f'<circle{extra} cx="{cx:.1f}" cy="{cy:.1f}" {paint}>{tip}</circle>'


def _triangle(cls: str, cx: float, cy: float, extra: str = "", title: str = "") -> str:
    """A NaN/Inf marker: red triangle, filled for |∇W|, hollow for |∂L/∂y| (as the series markers)."""
    fill = RED if cls == "weight" else "#fff"
    if cls != "weight":
        extra = _hollow(extra)
    tip = f"<title>{title}</title>" if title else ""
    return (f'<path{extra} d="M{cx:.1f},{cy - 4.5:.1f} l5,9 h-10 z" fill="{fill}" stroke="{RED}" '
            f'stroke-width="1.5" stroke-linejoin="round">{tip}</path>')


def _text_px(text: str) -> float:
    return CHAR_PX * len(text)


def chart(report: Report, view: ReportView) -> str:
    """Inline SVG: one x slot per layer (depth order), log10 y with decade gridlines, both norms per layer.

    NaN/Inf values get red triangles in a strip above the plot, exact zeros (dead units, unused weights) markers
    in a strip below it: neither has a place on a log scale, and a layer without a visible mark would look
    unmeasured. Styling is by presentation attributes; the class names stay as hooks for tests and user CSS.
    """
    flagged = view.flagged
    layers = report.layers
    n = len(layers)
    kinds = [k for k in view.kinds if k != "none"]
    by_kind = len(kinds) > 1          # one |∇W| series per layer kind
    kind_of = [lv.kind for lv in view.layers]
    if not n:
        return '<p class="no-chart">No layers were measured, so there is no gradient-flow chart.</p>'
    names = [_name(lv["name"]) for lv in layers]
    logs = [math.log10(lv[k]) for lv in layers for _, k, _, _ in SERIES if _positive(lv.get(k))]
    hi = math.ceil(max(logs) - 1e-9) if logs else 0
    lo = min(math.floor(min(logs)) if logs else hi, hi - 4)

    def measured(lv: dict[str, Any], key: str) -> bool:
        """False where a layer has nothing to measure: a weightless layer's |∇W|."""
        return not (lv.get(key) is None and key == "grad_norm" and not lv.get("trainable_params"))

    has_bad = any(_nonfinite(lv.get(k)) for lv in layers for _, k, _, _ in SERIES)
    has_zero = any(lv.get(k) == 0 and not isinstance(lv.get(k), bool) for lv in layers for _, k, _, _ in SERIES)

    # x labels (thinned to at most MAX_X_LABELS) decide the left and bottom margins: rotated -40°, a label
    # reaches cos 40° of its length to the left of its layer and sin 40° of it down.
    k = math.ceil(n / MAX_X_LABELS)
    shown = [(i, _short(names[i])) for i in range(0, n, k)]
    label_px = max(_text_px(short) for _, short in shown)
    left = max(64, math.ceil(0.77 * label_px + 8))
    right = 16
    pw = min(max(n * 24, 560), MAX_CHART_WIDTH - left - right)
    width = left + pw + right
    dx = pw / n
    r = min(3.5, max(1.2, dx / 3))   # smaller markers when layers are dense

    # legend items, flowed into rows that fit the chart's width
    weight_items = [
        (f'<line class="legend-weight" x1="0" y1="0" x2="24" y2="0" {_LINE["weight"]}/>'
         + _marker("weight", 12, 0, 3.5, ' class="legend-weight"'), f"{SERIES[0][2]} {SERIES[0][3]}")]
    if by_kind:
        weight_items = [
            (f'<line class="legend-weight legend-kind-{k}" x1="0" y1="0" x2="24" y2="0" stroke="{KIND_STYLE[k][0]}" '
             f'stroke-width="2"{KIND_STYLE[k][1]}/>'
             + _marker("weight", 12, 0, 3.5, f' class="legend-weight"', colour=KIND_STYLE[k][0]),
             f"{SERIES[0][2]} {KIND_LABELS[k]}") for k in kinds]
    items: list[tuple[str, str]] = weight_items + [
        (f'<line class="legend-output" x1="0" y1="0" x2="24" y2="0" {_LINE["output"]}/>'
         + _marker("output", 12, 0, 3.5, ' class="legend-output"'), f"{SERIES[1][2]} {SERIES[1][3]}")]
    if has_bad:
        items += [(_triangle(cls, 12, 0, f' class="legend-nonfinite-{cls}"'), f"{sym} NaN/Inf")
                  for cls, _, sym, _ in SERIES]
    if flagged and any(lv["name"] in flagged for lv in layers):
        band = f'<rect class="legend-flagged" x="0" y="-6" width="24" height="12" fill="{RED}" fill-opacity="0.12"/>'
        items.append((band, "layer with a finding"))
    legend: list[str] = []
    lx, ly = float(left), 14
    for j, (swatch, words) in enumerate(items):
        w = 30 + _text_px(words)
        if lx > left and (j == len(weight_items) + 1 or lx + w > width - right):   # series first, markers below
            lx, ly = float(left), ly + 18
        legend.append(f'<g transform="translate({lx:.0f} {ly})">{swatch}'
                      f'<text x="30" y="4">{_e(words)}</text></g>')
        lx += w + 18

    # vertical layout: legend, [NaN/Inf strip], plot, [zero strip], x axis, x labels, axis title
    band_top = ly + 16
    bad_rows = (band_top + 8, band_top + 19)
    top = band_top + (36 if has_bad else 0)
    ph = 240
    zero_rows = (top + ph + 16, top + ph + 27)
    axis_y = top + ph + (36 if has_zero else 0)
    height = math.ceil(axis_y + 0.65 * label_px + 44)

    def x(i: int) -> float:
        return left + (i + 0.5) * dx

    def y(v: float) -> float:
        return top + ph * (hi - math.log10(v)) / (hi - lo)

    label = (f"Gradient flow for {report.model.get('spec')}: weight-gradient norm and output-gradient norm "
             f"for {_plural(n, 'layer')} in depth order, log scale from 1e{lo} to 1e{hi}")
    p = [(f'<div class="chart-box"><svg class="chart" role="img" aria-label="{_e(label)}" '
          f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
          f'font-family="{_FONTS}" font-size="{FONT_PX}" fill="{INK}">')]
    for i, lv in enumerate(layers):
        if lv["name"] in flagged:
            w = max(dx, 3.0)   # still visible among 1000 layers
            p.append(f'<rect class="flagged" x="{x(i) - w / 2:.1f}" y="{band_top}" width="{w:.1f}" '
                     f'height="{axis_y - band_top}" fill="{RED}" fill-opacity="0.12">'
                     f'<title>{_e(names[i])}: {_e(", ".join(flagged[lv["name"]]))}</title></rect>')
    step = max(1, math.ceil((hi - lo) / 12))
    for d in range(hi, lo - 1, -step):
        yy = top + ph * (hi - d) / (hi - lo)
        p.append(f'<line class="grid" x1="{left}" y1="{yy:.1f}" x2="{left + pw}" y2="{yy:.1f}" stroke="{GRID}"/>'
                 f'<text class="ylabel" x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">1e{d}</text>')
    if has_bad:
        p.append(f'<text class="ylabel-nonfinite" x="{left - 6}" y="{(bad_rows[0] + bad_rows[1]) / 2 + 4:.1f}" '
                 f'text-anchor="end" fill="{RED}" font-weight="700">NaN/Inf</text>'
                 f'<line class="separator" x1="{left}" y1="{top - 7}" x2="{left + pw}" y2="{top - 7}" '
                 f'stroke="{MUTED}" stroke-dasharray="2 3"/>')
    if has_zero:
        p.append(f'<text class="ylabel-zero" x="{left - 6}" y="{(zero_rows[0] + zero_rows[1]) / 2 + 4:.1f}" '
                 f'text-anchor="end">0</text><line class="separator" x1="{left}" y1="{top + ph + 7}" '
                 f'x2="{left + pw}" y2="{top + ph + 7}" stroke="{MUTED}" stroke-dasharray="2 3"/>')
    p.append(f'<line class="axis" x1="{left}" y1="{band_top if has_bad else top}" x2="{left}" y2="{axis_y}" '
             f'stroke="{MUTED}"/><line class="axis" x1="{left}" y1="{axis_y}" x2="{left + pw}" y2="{axis_y}" '
             f'stroke="{MUTED}"/>')
    p.append(f'<text x="14" y="{top + ph / 2:.0f}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2:.0f})">'
             'gradient norm (log scale)</text>')
    p.append(f'<text x="{left + pw / 2:.0f}" y="{height - 6}" text-anchor="middle">layers in depth order →</text>')
    for i, short in shown:
        hot = layers[i]["name"] in flagged
        cls = "xlabel flagged" if hot else "xlabel"
        paint = f' fill="{RED}" font-weight="700"' if hot else ""
        yy = axis_y + 14
        p.append(f'<text class="{cls}" x="{x(i):.1f}" y="{yy}" text-anchor="end"{paint} '
                 f'transform="rotate(-40 {x(i):.1f} {yy})"><title>{_e(names[i])}</title>{_e(short)}</text>')
    groups: dict[str, str] = {}
    odd: list[str] = []     # NaN/Inf and zero markers
    for s, (cls, key, sym, _) in enumerate(SERIES):
        lines: list[str] = []
        marks: list[str] = []
        for kind in (kinds if cls == "weight" and by_kind else [None]):
            colour, dash = KIND_STYLE.get(kind or "linear", (BLUE, ""))
            style = f'stroke="{colour}" stroke-width="2"{dash}' if kind else _LINE[cls]
            segs: list[list[str]] = [[]]
            for i, lv in enumerate(layers):
                if kind is not None and kind_of[i] != kind:
                    continue
                v = lv.get(key)
                tip = f"{_e(names[i])}: {sym} {_e(fmt(v))}"
                if _positive(v):
                    segs[-1].append(f"{x(i):.1f},{y(v):.1f}")
                    marks.append(_marker(cls, x(i), y(v), r, title=tip, colour=colour))
                    continue
                if not measured(lv, key):
                    continue   # no weights of its own: nothing to measure, the line runs on
                segs.append([])
                if _nonfinite(v):
                    odd.append(_triangle(cls, x(i), bad_rows[s], f' class="nonfinite nonfinite-{cls}"', tip))
                elif v == 0 and not isinstance(v, bool):
                    odd.append(_marker(cls, x(i), zero_rows[s], max(r, 2.5), f' class="zero zero-{cls}"', tip))
            kind_cls = f' class="kind-{kind}"' if kind else ""
            lines += [f'<polyline{kind_cls} points="{" ".join(seg)}" fill="none" {style} stroke-linejoin="round"/>'
                      for seg in segs if len(seg) > 1]
        groups[cls] = f'<g class="series-{cls}">{"".join(lines)}{"".join(marks)}</g>'
    p.append(groups["output"])    # weight on top: its dot stays visible inside a coinciding output ring
    p.append(groups["weight"])
    p.append(f'<g class="nonfinite-markers">{"".join(odd)}</g>')
    p.append(f'<g class="legend">{"".join(legend)}</g></svg></div>')
    return "\n".join(p)


def _finding(f: Finding, n: int, layers: list[dict[str, Any]] | None = None) -> str:
    layers = layers or []
    sev = f.severity.value
    at = f' at <code>{_e(_name(f.layer))}</code>' if f.layer is not None else ""
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
        out.append(_before_after_chart(layers, v["profile_after"]))
    out.append("</div>")
    return "".join(out)


def _before_after_chart(layers: list[dict[str, Any]], after: dict[str, Any]) -> str:
    """|dL/dy| per weight layer (forward order, log scale): the model as given and the changed copy."""
    names = [l["name"] for l in layers if l.get("name") in after]
    before = {l["name"]: l.get("output_grad_norm") for l in layers}
    series = {"before": [before.get(n) for n in names], "after": [after.get(n) for n in names]}
    vals = [v for s in series.values() for v in s if isinstance(v, (int, float)) and v > 0 and math.isfinite(v)]
    if len(names) < 2 or not vals:
        return ""
    lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    hi = hi if hi > lo else lo + 1
    w, h, left, top, bottom = 360, 134, 44, 8, 32   # the bottom strip: first/last layer, then the legend

    def xy(i: int, v: float) -> str:
        x = left + (w - left - 8) * i / (len(names) - 1)
        y = top + (h - top - bottom) * (hi - math.log10(v)) / (hi - lo)
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg class="before-after" viewBox="0 0 {w} {h}" role="img" aria-label="|dL/dy| per layer before '
             f'and after the change">']
    for exp in (lo, hi):
        y = top + (h - top - bottom) * (hi - exp) / (hi - lo)
        parts.append(f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end">1e{exp}</text>')
    for key, s in series.items():
        pts = [xy(i, v) for i, v in enumerate(s) if isinstance(v, (int, float)) and v > 0 and math.isfinite(v)]
        if len(pts) > 1:
            parts.append(f'<polyline class="{key}" points="{" ".join(pts)}" fill="none"/>')
    parts.append(f'<text x="{left}" y="{h - 18}">{_e(_name(names[0]))}</text>'
                 f'<text x="{w - 8}" y="{h - 18}" text-anchor="end">{_e(_name(names[-1]))}</text>')
    # The legend under the plot (the lines' ends meet at the last layer, where labels would collide).
    y = h - 4
    parts.append(f'<polyline class="before" points="{left},{y - 3} {left + 18},{y - 3}" fill="none"/>'
                 f'<text class="before" x="{left + 22}" y="{y}">before (as given)</text>'
                 f'<polyline class="after" points="{left + 130},{y - 3} {left + 148},{y - 3}" fill="none"/>'
                 f'<text class="after" x="{left + 152}" y="{y}">after (the changed copy)</text>')
    parts.append("</svg>")
    return f'<div class="chart-box">{"".join(parts)}</div>'



def _layer_notes(lv: LayerView) -> str:
    """The same notes as the terminal table (from the view), then the codes of the findings covering it."""
    return "; ".join([n.text for n in lv.notes] + ([", ".join(lv.codes)] if lv.codes else []))


def time_chart(lv: LayerView) -> str:
    """A recurrent layer's gradient through time: |∂L/∂x_t| per time step (earliest left), log scale. Exact zeros
    (underflow) sit in a strip below the plot."""
    prof = lv.time_profile or []
    n = len(prof)
    pos = [v for v in prof if _positive(v)]
    hi = math.ceil(math.log10(max(pos)) - 1e-9) if pos else 0
    lo = min(math.floor(math.log10(min(pos))) if pos else hi, hi - 4)
    left, right, top, ph = 64, 16, 12, 160
    pw = min(max(n * 10, 320), 640)
    zeros = any(v == 0 for v in prof)
    axis_y = top + ph + (24 if zeros else 0)
    width, height = left + pw + right, axis_y + 44
    dx = pw / max(n, 1)

    def x(i: int) -> float:
        return left + (i + 0.5) * dx

    def y(v: float) -> float:
        return top + ph * (hi - math.log10(v)) / (hi - lo)

    label = (f"Gradient through time for {lv.display}: |∂L/∂x_t| at {n} points over {lv.time_steps} time steps, "
             f"log scale from 1e{lo} to 1e{hi}")
    p = [f'<div class="chart-box"><svg class="chart time-chart" role="img" aria-label="{_e(label)}" '
         f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" font-family="{_FONTS}" '
         f'font-size="{FONT_PX}" fill="{INK}">']
    step = max(1, math.ceil((hi - lo) / 8))
    for d in range(hi, lo - 1, -step):
        yy = top + ph * (hi - d) / (hi - lo)
        p.append(f'<line class="grid" x1="{left}" y1="{yy:.1f}" x2="{left + pw}" y2="{yy:.1f}" stroke="{GRID}"/>'
                 f'<text class="ylabel" x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">1e{d}</text>')
    if zeros:
        p.append(f'<text class="ylabel-zero" x="{left - 6}" y="{top + ph + 16}" text-anchor="end">0</text>')
    p.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}" stroke="{MUTED}"/>'
             f'<line class="axis" x1="{left}" y1="{axis_y}" x2="{left + pw}" y2="{axis_y}" stroke="{MUTED}"/>')
    p.append(f'<text x="{left}" y="{axis_y + 16}">earliest step</text>'
             f'<text x="{left + pw}" y="{axis_y + 16}" text-anchor="end">latest step</text>'
             f'<text x="{left + pw / 2:.0f}" y="{axis_y + 34}" text-anchor="middle">time →  (|∂L/∂x_t|, '
             f'{_e(lv.display)}, T={_e(lv.time_steps)})</text>')
    pts, marks = [], []
    for i, v in enumerate(prof):
        tip = f"<title>point {i + 1} of {n}: {_e(fmt(v))}</title>"
        if _positive(v):
            pts.append(f"{x(i):.1f},{y(v):.1f}")
            marks.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{BLUE}">{tip}</circle>')
        elif v == 0:
            marks.append(f'<circle class="zero hollow" cx="{x(i):.1f}" cy="{top + ph + 12}" r="2.5" fill="#fff" '
                         f'stroke="{BLUE}">{tip}</circle>')
    if len(pts) > 1:
        p.append(f'<polyline points="{" ".join(pts)}" fill="none" {_LINE["weight"]} stroke-linejoin="round"/>')
    p.append("".join(marks) + "</svg></div>")
    return "\n".join(p)


def _blocks(view: ReportView) -> str:
    """Per repeated block (`transformer.h.3`, `layer2.1`): its layers, the norm of all its weight gradients
    together, and the range of |∂L/∂y| inside it. Comparing blocks avoids the norm-vs-linear zig-zag."""
    rows = []
    for b in view.blocks:
        members = view.layers[b.first:b.last + 1]
        og = [m.output_grad_norm for m in members if _positive(m.output_grad_norm)]
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
         (f'<p class="meta">{_e(m.get("class"))} · {_plural(len(report.layers), "layer")} measured · '
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
            f'{_e(f.rule)}{" at <code>" + _e(_name(f.layer)) + "</code>" if f.layer is not None else ""}: '
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
         (f'<p class="meta">gradcheck {_e(__version__)} · {_plural(models, "model")} · '
         f'{_counts(suite.counts(), ", ")} · fail-on {_e(suite.fail_on.value)} · exit {suite.exit_code}</p></header>')]
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
    p += [render_report(r, v, i, counter) for i, (r, v) in enumerate(zip(suite.reports, views), 1)]
    p += [render_error(e, i) for i, e in enumerate(suite.errors, 1)]
    p += ["</body>", "</html>"]
    out.write("\n".join(p) + "\n")
