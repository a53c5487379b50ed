"""The training rehearsal's trajectory in every format: small self-contained functions that each
renderer calls with the report's `training` section (plain data): sparklines for the terminal, lines
for Markdown, an inline SVG chart for HTML."""

from __future__ import annotations

import html
import math
from typing import Any

from gradcheck_cli.numbers import fmt as _fmt

SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 40      # characters: fits 60 columns beside its label
SERIES = (("loss", "loss"), ("grad_norm", "|∇| global"), ("update_ratio_max", "max |Δw|/|w|"))


def fmt(x: Any) -> str:
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("Inf" if x > 0 else "-Inf")
    return _fmt(x, sci_digits=1)


def _num(v: Any) -> float | None:
    if isinstance(v, str):   # JSON-safe "NaN"/"Infinity"
        return math.nan
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def series(training: dict[str, Any], key: str) -> list[float | None]:
    return [_num(s.get(key)) for s in training.get("steps", [])]


def _bucket(values: list[float | None], width: int) -> list[float | None]:
    """Down-sample to `width` points (the largest value of each bucket, so spikes stay visible)."""
    n = len(values)
    if n <= width:
        return list(values)
    out: list[float | None] = []
    for i in range(width):
        chunk = [v for v in values[i * n // width:(i + 1) * n // width] if v is not None]
        nan = any(not math.isfinite(v) for v in chunk)
        out.append(math.nan if nan else (max(chunk) if chunk else None))
    return out


def sparkline(values: list[float | None], width: int = SPARK_WIDTH) -> str:
    """Log-scale sparkline; '!' marks NaN/Inf, ' ' a missing value."""
    pts = _bucket(values, width)
    pos = [v for v in pts if v is not None and math.isfinite(v) and v > 0]
    if not pos:
        return "".join("!" if v is not None and not math.isfinite(v) else " " for v in pts)
    lo, hi = math.log10(min(pos)), math.log10(max(pos))
    span = hi - lo or 1.0
    out = []
    for v in pts:
        if v is None:
            out.append(" ")
        elif not math.isfinite(v):
            out.append("!")
        elif v <= 0:
            out.append(SPARK[0])
        else:
            out.append(SPARK[min(len(SPARK) - 1, int((math.log10(v) - lo) / span * (len(SPARK) - 1) + 0.5))])
    return "".join(out)


def headline(training: dict[str, Any]) -> str:
    t = training
    parts = [f"{t.get('steps_run')} of {t.get('steps_requested')} steps", str(t.get("optimizer")),
             str(t.get("precision"))]
    if t.get("skipped_steps"):
        parts.append(f"{len(t['skipped_steps'])} skipped for overflow")
    if t.get("stopped"):
        parts.append(f"stopped: {t['stopped']}")
    return ", ".join(parts)


def _ends(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    return f"{fmt(vals[0])} -> {fmt(vals[-1])}" if vals else "-"


def text_lines(training: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, sparkline, first -> last) rows for the terminal."""
    return [(label, sparkline(series(training, key)), _ends(series(training, key))) for key, label in SERIES]


def onset_phrase(training: dict[str, Any]) -> str:
    ons = training.get("onsets") or []
    return "; ".join(f"{o['rule']} from step {o['step']}" for o in ons)


def markdown_lines(training: dict[str, Any]) -> list[str]:
    out = [f"**Training rehearsal**: {headline(training)}", ""]
    out.append("| series | first -> last | trajectory |")
    out.append("|---|---|---|")
    for label, line, ends in text_lines(training):
        out.append(f"| {label} | {ends} | `{line}` |")
    out.append("")
    onsets = onset_phrase(training)
    if onsets:
        out += [f"Onset: {onsets}.", ""]
    return out


def html_section(training: dict[str, Any]) -> str:
    """An inline SVG with one log-scale panel per series (no script, no external asset)."""
    w, h, pad = 640, 90, 36
    panels = []
    onset_steps = sorted({o["step"] for o in training.get("onsets") or []})
    n = max(1, len(training.get("steps", [])))
    for key, label in SERIES:
        vals = series(training, key)
        pos = [v for v in vals if v is not None and math.isfinite(v) and v > 0]
        body = []
        if pos:
            lo, hi = math.log10(min(pos)), math.log10(max(pos))
            span = hi - lo or 1.0

            def x(i: int) -> float:
                return pad + (w - 2 * pad) * (i / max(n - 1, 1))

            def y(v: float) -> float:
                return 8 + (h - 24) * (1 - (math.log10(v) - lo) / span)

            pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(vals)
                           if v is not None and math.isfinite(v) and v > 0)
            body.append(f'<polyline class="traj" fill="none" stroke="currentColor" points="{pts}"/>')
            for i, v in enumerate(vals):
                if v is not None and not math.isfinite(v):
                    body.append(f'<text class="nan" x="{x(i):.1f}" y="{h - 12}">NaN</text>')
            for s in onset_steps:
                body.append(f'<line class="onset" x1="{x(s):.1f}" x2="{x(s):.1f}" y1="4" y2="{h - 14}" '
                            f'stroke="red" stroke-dasharray="3,2"><title>onset at step {s}</title></line>')
            body.append(f'<text x="2" y="14" font-size="10">{html.escape(fmt(max(pos)))}</text>')
            body.append(f'<text x="2" y="{h - 14}" font-size="10">{html.escape(fmt(min(pos)))}</text>')
        body.append(f'<text x="{pad}" y="{h - 2}" font-size="11">{html.escape(label)} '
                    f'({html.escape(_ends(vals))}), steps 0-{n - 1}</text>')
        panels.append(f'<svg class="trajectory" role="img" aria-label="{html.escape(label)} per step" '
                      f'viewBox="0 0 {w} {h}" width="100%" style="max-width:{w}px">{"".join(body)}</svg>')
    onsets = onset_phrase(training)
    return ('<section class="training"><h3>Training rehearsal</h3>'
            f'<p class="meta">{html.escape(headline(training))}</p>' + "".join(panels)
            + (f'<p class="meta">Onset: {html.escape(onsets)}.</p>' if onsets else "") + "</section>")
