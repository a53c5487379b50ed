"""The terminal report's per-layer table: one row per layer with its norms and a log-scale gradient-flow bar
(|∂L/∂y|), block lines over the rows of a repeated block (`transformer.h.0`), gap rows where --max-rows leaves
layers out, and the finding markers (`◀ GC101`) and notes of each layer.

Laid out for the width it is given: every row is one line; on a narrow terminal the bars shrink first, then the
type column, then long layer names are shortened in the middle (`elide`); notes that do not fit go on a line of
their own under the name, and the markers always stay on their row. Without a width nothing is shortened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rich.text import Text

from gradcheck_cli.numbers import fmt
from gradcheck_cli.report.escape import terminal as _t
from gradcheck_cli.report.view import LayerView, ReportView

BAR_WIDTH = 14
MIN_BAR = 8
MIN_NAME = 12
MIN_TYPE = 8
_PARTIAL = " ▏▎▍▌▋▊▉"
MARK = "◀"


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


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
    """The bar, without padding (the caller pads it when a column follows)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN/Inf"[:width]
    if not _positive(value):
        return ""
    lo, hi = scale
    frac = (math.log10(value) - lo) / (hi - lo)
    eighths = max(1, round(min(max(frac, 0.0), 1.0) * width * 8))
    full, part = divmod(eighths, 8)
    return "█" * full + (_PARTIAL[part] if part else "")


def elide(s: str, width: int) -> str:
    """`s` in at most `width` characters: the middle replaced by '…', keeping the start and more of the end
    (the end of a dotted name tells layers apart), cut at dots where that loses little."""
    if len(s) <= width:
        return s
    if width <= 1:
        return "…"[:width]
    tail_room = width - 1 - max(1, (width - 1) // 3)
    tail = s[-tail_room:]
    dot = tail.find(".")
    if 0 <= dot < len(tail) // 2:          # start the tail at a part boundary
        tail = tail[dot:]
    head = s[:width - 1 - len(tail)]
    return head + "…" + tail


@dataclass
class _Row:
    kind: str                      # "layer" | "block" | "gap"
    layer: LayerView | None = None
    text: str = ""                 # block name


def _select(view: ReportView, max_rows: int) -> list[_Row]:
    """All layers, or the first and last ones plus every flagged layer; block lines before each block's
    first shown layer; a gap row where layers are left out."""
    layers = view.layers
    n = len(layers)
    if max_rows <= 0 or n <= max_rows:
        keep = list(range(n))
    else:
        head, tail = max_rows // 2, max_rows - max_rows // 2
        keep = sorted(set(range(head)) | set(range(n - tail, n)) | {i for i, lv in enumerate(layers) if lv.flagged})
    rows: list[_Row] = []
    last, block = -1, None
    for i in keep:
        lv = layers[i]
        if i != last + 1:
            rows.append(_Row("gap"))
            block = None
        if lv.block is not None and lv.block != block:
            rows.append(_Row("block", text=_t(lv.block)))
        block = lv.block
        rows.append(_Row("layer", lv))
        last = i
    return rows


def _mark(lv: LayerView) -> str:
    return f"{MARK} {','.join(lv.codes)}" if lv.codes else ""


def _notes(lv: LayerView) -> str:
    return " ".join(n.text for n in lv.notes)


def layer_table(view: ReportView, max_rows: int, width: int | None) -> list[Text]:
    rows = _select(view, max_rows)
    shown = [r.layer for r in rows if r.layer is not None]
    scale = bar_scale([lv.output_grad_norm for lv in view.layers])
    flow_title = f"flow 1e{scale[0]:+.0f}..1e{scale[1]:+.0f}"
    indent = 2 if any(r.kind == "block" for r in rows) else 0

    def name_of(lv: LayerView) -> str:
        return (" " * indent + lv.local) if lv.block else lv.display

    w_idx = max([1] + [len(str(lv.index)) for lv in shown])
    w_name = max([len("layer")] + [len(name_of(lv)) for lv in shown])
    w_type = max([len("type")] + [len(lv.type) for lv in shown])
    gw = {id(lv): fmt(lv.grad_norm) for lv in shown}
    og = {id(lv): fmt(lv.output_grad_norm) for lv in shown}
    w_gw = max([len("|∇W|")] + [len(v) for v in gw.values()])
    w_og = max([len("|∂L/∂y|")] + [len(v) for v in og.values()])
    w_bar = max(BAR_WIDTH, len(flow_title))
    w_mark = max([0] + [len(_mark(lv)) for lv in shown])

    def fixed() -> int:
        return w_idx + 1 + w_name + 1 + w_type + 1 + w_gw + 1 + w_og + 1 + w_bar + (1 + w_mark if w_mark else 0)

    if width is not None:
        # Narrow terminal: shorter bars, then shorter type names, then names shortened in the middle.
        over = fixed() - width
        if over > 0:
            cut = min(over, w_bar - max(MIN_BAR, len("flow"))); w_bar -= cut; over -= cut
        if over > 0:
            cut = min(over, w_type - MIN_TYPE) if w_type > MIN_TYPE else 0; w_type -= cut; over -= cut
        if over > 0:
            cut = min(over, w_name - MIN_NAME) if w_name > MIN_NAME else 0; w_name -= cut; over -= cut
    bar_cells = min(BAR_WIDTH, w_bar)
    if len(flow_title) > w_bar:
        flow_title = "flow"

    lines: list[Text] = []
    head = Text(style="bold")
    head.append(f"{'#':>{w_idx}} {'layer':<{w_name}} {'type':<{w_type}} {'|∇W|':>{w_gw}} {'|∂L/∂y|':>{w_og}} "
                f"{flow_title}")
    if any(lv.codes or lv.notes for lv in shown):
        head.append(" " * (w_bar - len(flow_title)) + " notes")
    lines.append(head)
    for r in rows:
        if r.kind == "gap":
            lines.append(Text(" " * (w_idx + 1) + "…", style="dim"))
            continue
        if r.kind == "block":
            room = (width - w_idx - 1) if width is not None else len(r.text)
            lines.append(Text(" " * (w_idx + 1) + elide(r.text, max(room, 1)), style="dim"))
            continue
        lv = r.layer
        assert lv is not None
        style = "red" if lv.flagged else ""
        line = Text()
        line.append(f"{lv.index:>{w_idx}} ", style="dim")
        line.append(f"{elide(name_of(lv), w_name):<{w_name}}", style=style)
        line.append(f" {elide(lv.type, w_type):<{w_type}} {gw[id(lv)]:>{w_gw}} {og[id(lv)]:>{w_og}} ")
        line.append(bar(lv.output_grad_norm, scale, bar_cells), style="cyan")
        tail = " ".join(x for x in (_mark(lv), _notes(lv)) if x)
        before = len(line.plain)
        if tail:
            pad = " " * (w_idx + 1 + w_name + 1 + w_type + 1 + w_gw + 1 + w_og + 1 + w_bar + 1 - before)
            if width is None or before + len(pad) + len(tail) <= width:
                line.append(pad)
                line.append(tail, style="red" if lv.flagged else "yellow")
                lines.append(line)
                continue
            mark = _mark(lv)
            if mark:
                line.append(pad)
                line.append(mark, style="red")
            lines.append(line)
            notes = _notes(lv)
            if notes:   # on its own line, under the name
                room = max(width - (w_idx + 1 + indent + 2), 8)
                lines.append(Text(" " * (w_idx + 1 + indent) + "↳ " + elide(notes, room), style="yellow"))
            continue
        lines.append(line)
    return lines
