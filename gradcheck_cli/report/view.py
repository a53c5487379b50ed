"""The per-layer view: what every renderer shows about each layer, built once from the finished report.

Plain data (dataclasses of strings, numbers and lists): display name, kind, the codes of the findings that
cover the layer, the notes (saturation, dead units, NaN/Inf, through-time profile), and the repeated block
(`transformer.h.3`, `layer2.1`) the layer belongs to. Text, Markdown and HTML read this instead of the raw
layer dicts, so they cannot drift apart.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from gradcheck_cli.findings import Report
from gradcheck_cli.report.escape import terminal as _t
from gradcheck_cli.numbers import fmt

ROOT = "(model)"

# Layer kinds for the weight-gradient series (norm layers have much smaller weight gradients than linear
# layers, so one line through both zig-zags): (kind, label), in legend order.
KINDS: tuple[tuple[str, str], ...] = (
    ("linear", "Linear/Conv"), ("norm", "Norm"), ("embedding", "Embedding"), ("recurrent", "Recurrent"),
    ("other", "other weights"), ("none", "no weights"))
KIND_LABELS = dict(KINDS)


@dataclass(frozen=True)
class Note:
    kind: str    # "saturated" | "dead" | "off" | "nonfinite-output" | "nonfinite-grad" | "time"
    text: str    # what every renderer prints, e.g. "sat 72%", "dead 60/64", "T=100 first/last 1.2e-09"


@dataclass
class LayerView:
    index: int
    name: str                     # qualified name as measured; "" is the model itself
    display: str                  # the name people read: "(model)" for the root
    type: str
    kind: str                     # one of KINDS
    grad_norm: Any                # |∇W| (None: no weights of its own)
    output_grad_norm: Any         # |∂L/∂y|
    has_weights: bool
    codes: list[str]              # active findings covering this layer
    notes: list[Note]
    block: str | None = None      # the repeated block it belongs to, e.g. "transformer.h.0"
    local: str = ""               # its name inside that block ("attn.c_attn"), or `display` without a block
    time_profile: list[float] | None = None   # recurrent: |∂L/∂x_t| per time step
    time_steps: int | None = None

    @property
    def flagged(self) -> bool:
        return bool(self.codes)


@dataclass
class BlockView:
    name: str                     # "transformer.h.0"
    first: int                    # position in ReportView.layers of its first and last layer
    last: int
    grad_norm: float | None       # L2 norm over the weight gradients of all its layers (exact for disjoint params)
    codes: list[str] = field(default_factory=list)


@dataclass
class ReportView:
    layers: list[LayerView]
    blocks: list[BlockView]
    kinds: list[str]              # kinds with weights present, in KINDS order
    flagged: dict[str, list[str]]
    recurrent: list[LayerView]    # layers with a through-time profile

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def display_name(name: str | None) -> str:
    return ROOT if name == "" else _t(name)   # terminal-safe: control characters shown, escapes removed


def layer_kind(layer: dict[str, Any]) -> str:
    t = str(layer.get("type") or "")
    if not layer.get("trainable_params") and not layer.get("params"):
        return "none"
    if layer.get("recurrent"):
        return "recurrent"
    if "Norm" in t:
        return "norm"
    if "Embedding" in t:
        return "embedding"
    if re.search(r"Linear|Conv|Bilinear", t):
        return "linear"
    return "other"


def _notes(lv: dict[str, Any]) -> list[Note]:
    out = []
    sat = lv.get("saturated_fraction")
    if sat:
        out.append(Note("saturated", f"sat {100 * sat:.0f}%" if sat >= 0.005 else "sat <1%"))
    if lv.get("dead_units"):
        out.append(Note("dead", f"dead {lv['dead_units']}/{lv.get('units')}"))
    elif lv.get("off_units"):   # off on every example but not dead (correlation collapse, a small batch)
        out.append(Note("off", f"off {lv['off_units']}/{lv.get('units')}"))
    if lv.get("nonfinite_outputs"):
        out.append(Note("nonfinite-output", "NaN/Inf out"))
    if lv.get("nonfinite_output_grads") or lv.get("nonfinite_param_grads"):
        out.append(Note("nonfinite-grad", "NaN/Inf grad"))
    if lv.get("time_steps"):
        bi = bool(lv.get("bidirectional"))
        ratio = lv.get("time_grad_min_max" if bi else "time_grad_first_last")
        out.append(Note("time", f"T={lv['time_steps']} {'min/max' if bi else 'first/last'} {fmt(ratio)}"))
    return out


def block_of(names: list[str]) -> dict[str, str]:
    """Layer name -> its repeated block: the name up to the first numeric part that has more parts after it,
    where that container holds at least two numbered blocks (`transformer.h.0.attn.c_attn` ->
    `transformer.h.0`; `layer2.1.conv1` -> `layer2.1`). Plain nn.Sequential children (`0`, `1`) are no blocks."""
    candidates: dict[str, str] = {}
    indices: dict[str, set[str]] = {}
    for n in names:
        parts = n.split(".")
        for i, p in enumerate(parts[:-1]):
            if p.isdigit():
                container = ".".join(parts[:i])
                candidates[n] = ".".join(parts[:i + 1])
                indices.setdefault(container, set()).add(p)
                break
    return {n: b for n, b in candidates.items() if len(indices[b.rpartition(".")[0]]) >= 2}


def _l2(values: list[Any]) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not vals:
        return None
    if any(not math.isfinite(v) for v in vals):
        return math.nan
    return math.sqrt(sum(v * v for v in vals))


def build_view(report: Report) -> ReportView:
    flagged = report.flagged_layers()
    blocks_by_name = block_of([lv["name"] for lv in report.layers])
    layers: list[LayerView] = []
    for lv in report.layers:
        name = lv["name"]
        block = blocks_by_name.get(name)
        has_weights = bool(lv.get("trainable_params"))
        layers.append(LayerView(
            index=lv["index"], name=name, display=display_name(name), type=_t(lv.get("type")),
            kind=layer_kind(lv), grad_norm=lv.get("grad_norm"), output_grad_norm=lv.get("output_grad_norm"),
            has_weights=has_weights, codes=list(flagged.get(name, [])), notes=_notes(lv), block=block,
            local=_t(name[len(block) + 1:]) if block else display_name(name),
            time_profile=list(lv["time_grad_profile"]) if lv.get("time_grad_profile") else None,
            time_steps=lv.get("time_steps")))
    blocks: list[BlockView] = []
    for i, row in enumerate(layers):
        if row.block is None:
            continue
        if blocks and blocks[-1].name == row.block and blocks[-1].last == i - 1:
            blocks[-1].last = i
        else:
            blocks.append(BlockView(name=row.block, first=i, last=i, grad_norm=None))
    for b in blocks:
        members = layers[b.first:b.last + 1]
        b.grad_norm = _l2([m.grad_norm for m in members if m.has_weights])
        b.codes = list(dict.fromkeys(c for m in members for c in m.codes))
    present = {row.kind for row in layers if row.has_weights}
    kinds = [k for k, _ in KINDS if k in present]
    return ReportView(layers=layers, blocks=blocks, kinds=kinds, flagged=flagged,
                      recurrent=[row for row in layers if row.time_profile])
