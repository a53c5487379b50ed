"""Helpers shared by rules: number formatting, depth profiles, and phrases that make fixes specific."""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable

from gradcheck_cli import stats as S
from gradcheck_cli.numbers import fmt as _fmt
from gradcheck_cli.stats import LayerStats, RunStats

NORM_TYPES = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm")
WEIGHT_TYPES = ("Linear", "Conv", "Bilinear", "Conv1D")


def fmt(x: float | None) -> str:
    return "n/a" if x is None else _fmt(x)


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def name(layer_name: str) -> str:
    return f"`{layer_name or '(model)'}`"


def _finite_pos(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0


def depth_profile(stats: RunStats) -> list[LayerStats]:
    """Layers owning parameters whose output gradient was measured, in forward (depth) order."""
    return [l for l in stats.layers if l.role == S.PARAM and _finite_pos(l.output_grad_norm)]


def geo_median(values: Iterable[float]) -> float:
    logs = sorted(math.log(v) for v in values)
    n = len(logs)
    mid = logs[n // 2] if n % 2 else (logs[n // 2 - 1] + logs[n // 2]) / 2
    return math.exp(mid)


def ends(profile: list[LayerStats]) -> tuple[list[LayerStats], list[LayerStats]]:
    """The first and last quarter of a depth profile (at least one layer each)."""
    k = max(1, len(profile) // 4)
    return profile[:k], profile[-k:]


def depth_ratio(stats: RunStats, min_layers: int) -> dict | None:
    """Early/late ratio of the error signal over the depth profile, or None when too few layers.

    early/late: geometric medians of |dL/dy| over the first and last quarter of the layers owning
    parameters (forward order). Shared by vanishing-gradients (< threshold) and exploding-gradients.
    """
    profile = depth_profile(stats)
    if len(profile) < max(min_layers, 2):
        return None
    early, late = ends(profile)
    e = geo_median(x.output_grad_norm for x in early)
    l = geo_median(x.output_grad_norm for x in late)
    ratio = e / l
    # The best-served early layer: on a residual stream whose branches are scaled down (LayerScale 1e-5/1e-6,
    # small-init branches), the layers on the stream itself still get the full signal.
    best_ratio = max(x.output_grad_norm for x in early) / l
    return {"best_ratio": best_ratio,
        "profile": profile, "ratio": ratio, "per_layer": ratio ** (1.0 / max(len(profile) - 1, 1)),
        "evidence": {
            "early_layers": [x.name for x in early], "early_output_grad_norm": e,
            "late_layers": [x.name for x in late], "late_output_grad_norm": l,
            "first_layer": profile[0].name, "first_output_grad_norm": profile[0].output_grad_norm,
            "last_layer": profile[-1].name, "last_output_grad_norm": profile[-1].output_grad_norm,
            "layers_measured": len(profile),
        },
    }


def common_prefix(names: list[str]) -> str:
    if not names:
        return ""
    parts = [n.split(".") for n in names]
    out = []
    for group in zip(*parts):
        if all(g == group[0] for g in group):
            out.append(group[0])
        else:
            break
    if len(names) == 1 and out:
        out = out[:-1]
    return ".".join(out)


def describe_group(layers: list[LayerStats]) -> str:
    """e.g. 'the 8 nn.Sigmoid layers in `encoder`' or 'the 2 sigmoid() calls in `model.forward`'."""
    counts = Counter(l.type for l in layers)
    kinds = ", ".join(f"{n} {t}" if t.endswith("()") else f"{n} nn.{t}" for t, n in counts.most_common())
    word = "calls" if all(l.role == S.FUNCTIONAL for l in layers) else (
        "layers" if len(layers) > 1 else "layer")
    prefix = common_prefix([l.name for l in layers])
    where = f" in `{prefix}`" if prefix and not prefix.startswith("(model)") else ""
    if len(layers) == 1:
        return f"{kinds.split(' ', 1)[1]} {name(layers[0].name)}"
    return f"the {kinds} {word}{where}"


def activation_layers(stats: RunStats, *kinds: str) -> list[LayerStats]:
    return [l for l in stats.layers if l.activation in kinds]


def has_normalization(stats: RunStats) -> bool:
    return any(any(t in l.type for t in NORM_TYPES) for l in stats.layers)


def weight_layers(stats: RunStats) -> list[LayerStats]:
    return [l for l in stats.layers if l.role == S.PARAM and any(t in l.type for t in WEIGHT_TYPES)]


def preceding_param_layer(stats: RunStats, layer: LayerStats) -> LayerStats | None:
    best = None
    for l in stats.layers:
        if l.index >= layer.index:
            break
        if l.role == S.PARAM and l.weight_rms is not None:
            best = l
    return best


def he_std(layer: LayerStats) -> float | None:
    return math.sqrt(2.0 / layer.fan_in) if layer.fan_in else None


def xavier_std(layer: LayerStats) -> float | None:
    if layer.fan_in and layer.fan_out:
        return math.sqrt(2.0 / (layer.fan_in + layer.fan_out))
    return None


def list_names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def x_factor(x: float) -> str:
    """A growth/decay factor for messages: 'x0.85', 'x3.2', 'x1.2e+04' (never 'x1407267.09' or 'infx')."""
    if x is None or not math.isfinite(x):
        return "an unbounded factor"
    return "x" + _fmt(x)


def _owned_zero(stats: RunStats) -> set[str]:
    return set(stats.zero_grad_parameters) | set(stats.unused_parameters)


def param_layers(stats: RunStats) -> list[LayerStats]:
    """Layers owning trainable parameters, in forward (depth) order."""
    return [l for l in stats.layers if l.role == S.PARAM and l.trainable_params > 0]


def _is_zero_layer(layer: LayerStats, zero: set[str]) -> bool:
    """Every trainable parameter of the layer got no gradient or an exactly-zero one."""
    if layer.grad_norm is not None and layer.grad_norm != 0:
        return False
    prefix = f"{layer.name}." if layer.name else ""
    mine = [p for p in zero if p.startswith(prefix) and "." not in p[len(prefix):]]
    return bool(mine) or layer.grad_norm == 0


def signal_cut(stats: RunStats) -> dict | None:
    """No learning signal at all: every trainable layer before some point gets an exactly-zero (or no)
    gradient while a later one learns. Returns {cut, upstream, downstream, cause, cut_layer} or None.

    The cut is where, walking back from the loss, the error signal |dL/dy| first becomes exactly zero:
    `cut_layer` is the last layer (forward order) whose output gets a non-zero gradient while the layer
    before it gets zero. `cause` names the known ones from the layer's type and statistics.
    """
    zero = _owned_zero(stats)
    if not zero:
        return None
    layers = param_layers(stats)
    if len(layers) < 2 or not _is_zero_layer(layers[0], zero):
        return None
    k = 0
    while k < len(layers) and _is_zero_layer(layers[k], zero):
        k += 1
    upstream, downstream = layers[:k], layers[k:]
    # Walk forward from the last zero layer to the first layer whose output gradient is non-zero.
    end = downstream[0].index if downstream else math.inf
    after = [l for l in stats.layers if upstream[-1].index < l.index <= end]
    cut_layer = next((l for l in after if l.output_grad_norm not in (None, 0.0)),
                     downstream[0] if downstream else None)
    if cut_layer is None:   # nothing after the last weight gets a gradient: the loss itself is flat
        return {"upstream": upstream, "downstream": [], "cut_layer": None, "cause": "loss",
                "after_last_weight": True}
    cause = "other"
    last = upstream[-1]
    if last.output_grad_norm not in (None, 0.0) and last.output_grad_norm == last.output_grad_norm:
        # The error signal does reach the last zero layer; its weight gradient (dL/dy times its input) is
        # zero because its inputs are zero or so small that the product underflows: activations vanished
        # on the way forward.
        return {"upstream": upstream, "downstream": downstream, "cut_layer": last, "cause": "zero-input",
                "after_last_weight": False}
    if cut_layer.activation == S.RELU and cut_layer.off_fraction == 1.0:
        cause = "dead-relu"
    elif any(t in cut_layer.type for t in ("Softmax", "LogSoftmax", "softmax")):
        cause = "softmax"
    elif cut_layer.role == S.PARAM and cut_layer.weight_norm == 0:
        cause = "zero-weight"
    relus = [l for l in after if l.activation == S.RELU and l.off_fraction == 1.0]
    if cause == "other" and relus:
        cut_layer, cause = relus[-1], "dead-relu"
    return {"upstream": upstream, "downstream": downstream, "cut_layer": cut_layer, "cause": cause,
            "after_last_weight": not any(l.role == S.PARAM and l.index > cut_layer.index
                                         and any(t in l.type for t in WEIGHT_TYPES) for l in stats.layers)}
