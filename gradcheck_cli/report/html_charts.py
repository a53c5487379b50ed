"""The HTML report's inline SVG charts: the per-layer gradient-flow chart (log scale, |∇W| vs |∂L/∂y|, NaN/Inf
and zero strips), a recurrent layer's gradient through time, and a verified fix's |∂L/∂y| before and after.

Plain strings of SVG, styled by presentation attributes; the page around them (gradcheck_cli/report/html.py)
imports them and the few helpers both share.
"""

from __future__ import annotations

import math
from typing import Any

from gradcheck_cli.findings import Report
from gradcheck_cli.numbers import fmt
from gradcheck_cli.report.escape import html_text as _e
from gradcheck_cli.report.view import KIND_LABELS, LayerView, ReportView

MAX_X_LABELS = 40
MAX_CHART_WIDTH = 1040   # fits the page's 1052px content box, so the chart is never shrunk on a desktop screen
FONT_PX = 11
CHAR_PX = 6.6            # generous width of one character at FONT_PX (for layout: labels and legend never touch)
LABEL_CHARS = 20         # x-axis labels longer than this are shortened from the left, at a dot
SERIES = (("weight", "grad_norm", "|∇W|", "weight-gradient norm"),
          ("output", "output_grad_norm", "|∂L/∂y|", "output-gradient norm"))


def plural(n: int, word: str) -> str:
    """'1 layer', '2 layers' (the count as written, no thousands separator)."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def nonfinite(v: Any) -> bool:
    return (isinstance(v, float) and not math.isfinite(v)) or v in ("NaN", "Infinity", "-Infinity")


def name_of(layer: str | None) -> str:
    """A layer's name as shown; the model itself (name '') is '(model)'."""
    return "(model)" if layer == "" else str(layer)


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
    names = [name_of(lv["name"]) for lv in layers]
    logs = [math.log10(lv[k]) for lv in layers for _, k, _, _ in SERIES if positive(lv.get(k))]
    hi = math.ceil(max(logs) - 1e-9) if logs else 0
    lo = min(math.floor(min(logs)) if logs else hi, hi - 4)

    def measured(lv: dict[str, Any], key: str) -> bool:
        """False where a layer has nothing to measure: a weightless layer's |∇W|."""
        return not (lv.get(key) is None and key == "grad_norm" and not lv.get("trainable_params"))

    has_bad = any(nonfinite(lv.get(k)) for lv in layers for _, k, _, _ in SERIES)
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
             f"for {plural(n, 'layer')} in depth order, log scale from 1e{lo} to 1e{hi}")
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
                if positive(v):
                    segs[-1].append(f"{x(i):.1f},{y(v):.1f}")
                    marks.append(_marker(cls, x(i), y(v), r, title=tip, colour=colour))
                    continue
                if not measured(lv, key):
                    continue   # no weights of its own: nothing to measure, the line runs on
                segs.append([])
                if nonfinite(v):
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


def before_after_chart(layers: list[dict[str, Any]], after: dict[str, Any]) -> str:
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
    parts.append(f'<text x="{left}" y="{h - 18}">{_e(name_of(names[0]))}</text>'
                 f'<text x="{w - 8}" y="{h - 18}" text-anchor="end">{_e(name_of(names[-1]))}</text>')
    # The legend under the plot (the lines' ends meet at the last layer, where labels would collide).
    y = h - 4
    parts.append(f'<polyline class="before" points="{left},{y - 3} {left + 18},{y - 3}" fill="none"/>'
                 f'<text class="before" x="{left + 22}" y="{y}">before (as given)</text>'
                 f'<polyline class="after" points="{left + 130},{y - 3} {left + 148},{y - 3}" fill="none"/>'
                 f'<text class="after" x="{left + 152}" y="{y}">after (the changed copy)</text>')
    parts.append("</svg>")
    return f'<div class="chart-box">{"".join(parts)}</div>'


def time_chart(lv: LayerView) -> str:
    """A recurrent layer's gradient through time: |∂L/∂x_t| per time step (earliest left), log scale. Exact zeros
    (underflow) sit in a strip below the plot."""
    prof = lv.time_profile or []
    n = len(prof)
    pos = [v for v in prof if positive(v)]
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
        if positive(v):
            pts.append(f"{x(i):.1f},{y(v):.1f}")
            marks.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{BLUE}">{tip}</circle>')
        elif v == 0:
            marks.append(f'<circle class="zero hollow" cx="{x(i):.1f}" cy="{top + ph + 12}" r="2.5" fill="#fff" '
                         f'stroke="{BLUE}">{tip}</circle>')
    if len(pts) > 1:
        p.append(f'<polyline points="{" ".join(pts)}" fill="none" {_LINE["weight"]} stroke-linejoin="round"/>')
    p.append("".join(marks) + "</svg></div>")
    return "\n".join(p)
