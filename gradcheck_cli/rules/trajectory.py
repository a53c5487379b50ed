"""Helpers for the rules that read a training rehearsal (RunStats.training): pure functions of the
per-step series, shared by loss-divergence, update-ratio and the trajectory parts of non-finite,
exploding-gradients and dead-relus (and usable on a user's own loop's series)."""

from __future__ import annotations

import math
from typing import Any

from gradcheck_cli.stats import Trajectory


def median(values: list[float]) -> float | None:
    v = sorted(values)
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def finite_prefix(values: list[float]) -> list[float]:
    out = []
    for v in values:
        if not math.isfinite(v):
            break
        out.append(v)
    return out


def round_sig(x: float, digits: int = 1) -> float:
    if x <= 0 or not math.isfinite(x):
        return x
    return round(x, -int(math.floor(math.log10(x))) + digits - 1)


def lr_phrase(t: Trajectory) -> str:
    return f"lr {t.lr:g}" if t.lr is not None else "the optimizer's learning rate"


def divergence(t: Trajectory, rise: float) -> dict[str, Any] | None:
    """The loss rising above `rise` x its step-0 value: {onset, exceed, peak, peak_step, initial}."""
    losses = finite_prefix(t.losses)
    if len(losses) < 2 or losses[0] <= 0:
        return None
    l0 = losses[0]
    exceed = next((i for i, v in enumerate(losses) if v > rise * l0), None)
    if exceed is None:
        return None
    low = min(range(exceed + 1), key=lambda i: losses[i])
    peak_step = max(range(len(losses)), key=lambda i: losses[i])
    return {"onset": min(low + 1, exceed), "exceed": exceed, "initial": l0, "peak": losses[peak_step],
            "peak_step": peak_step, "min_before": losses[low]}


def oscillation(t: Trajectory, growth: float, alternation: float, min_steps: int) -> dict[str, Any] | None:
    """Loss differences alternating in sign with an amplitude that grows: {alternation, growth, onset}."""
    losses = finite_prefix(t.losses)
    if len(losses) < max(min_steps, 6) or losses[0] <= 0:
        return None
    d = [b - a for a, b in zip(losses, losses[1:])]
    pairs = list(zip(d, d[1:]))
    alt = sum(1 for a, b in pairs if a * b < 0) / len(pairs)
    k = max(2, len(d) // 3)
    early = sum(abs(x) for x in d[:k]) / k
    late = sum(abs(x) for x in d[-k:]) / k
    g = late / early if early > 0 else math.inf
    # growing swings that are large next to the loss itself (noise is small and does not grow)
    if alt >= alternation and g >= growth and late > 0.1 * losses[0]:
        onset = next((i for i in range(len(d)) if abs(d[i]) > 2 * early), len(d) - k)
        return {"alternation": alt, "growth": g, "onset": onset + 1, "late_amplitude": late,
                "early_amplitude": early}
    return None


def grad_spikes(t: Trajectory, spike: float, min_steps: int) -> dict[str, Any] | None:
    """Global gradient-norm spikes: a step whose norm is above `spike` x the median of the steps before it.
    Returns the onset, the largest step-to-step jump, and the healthy steps' median (for max_norm)."""
    g = finite_prefix(t.grad_norms)
    if len(g) < min_steps:
        return None
    spikes = []
    for i in range(3, len(g)):
        ref = median(g[:i])
        if ref and ref > 0 and g[i] > spike * ref:
            spikes.append(i)
    if not spikes:
        return None
    onset = spikes[0]
    healthy = [v for v in g[:onset] if v > 0]
    jumps = [(g[i] / g[i - 1], i) for i in range(1, len(g)) if g[i - 1] > 0]
    jump, jump_step = max(jumps) if jumps else (math.inf, onset)
    layer, layer_jump = None, 0.0
    for name, series in t.layer_grad_norms.items():
        s = finite_prefix(series)
        if len(s) > onset:
            ref = median([v for v in s[:onset] if v > 0])
            if ref and s[onset] / ref > layer_jump:
                layer, layer_jump = name, s[onset] / ref
    ref = median(healthy) or g[0]
    return {"onset": onset, "spike_steps": spikes, "onset_norm": g[onset], "healthy_median": ref,
            "largest_jump": jump, "largest_jump_step": jump_step, "max_norm": round_sig(2 * ref, 2),
            "peak": max(g), "layer": layer, "layer_jump": layer_jump}


def relus_died(t: Trajectory, min_dead_steps: int) -> dict[str, dict[str, Any]]:
    """Per ReLU layer: units alive at step 0 that never fired again for the last `min_dead_steps` steps
    (or more) of the run, and when they died (the step after they last fired)."""
    out: dict[str, dict[str, Any]] = {}
    n = t.steps
    dead_after = n - max(min_dead_steps, n // 4)
    for layer, start in t.relu_alive_at_start.items():
        last = t.relu_last_alive.get(layer, [])
        died = sorted(la + 1 for a, la in zip(start, last) if a and la < dead_after)
        if died:
            out[layer] = {"units": len(start), "alive_at_start": sum(1 for a in start if a), "died": len(died),
                          "first_death_step": died[0], "median_death_step": died[len(died) // 2]}
    return out


# -- the trajectory parts of existing rules (each rule calls one of these at its end) ------------------------

def spike_findings(stats: Any, opts: dict[str, Any], r: Any) -> list[Any]:
    """exploding-gradients over a rehearsal: global gradient-norm spikes, with a concrete max_norm."""
    from gradcheck_cli.rules._common import fmt, name

    t = stats.training
    if t is None:
        return []
    s = grad_spikes(t, opts["spike"], opts["min_train_steps"])
    if s is None:
        return []
    where = f"; the largest jump at that step is in {name(s['layer'])} (x{fmt(s['layer_jump'])})" if s["layer"] else ""
    msg = (f"The gradient norm spikes during training: at step {s['onset']} it is {fmt(s['onset_norm'])}, "
           f"{fmt(s['onset_norm'] / s['healthy_median'])}x the median of the steps before it "
           f"({fmt(s['healthy_median'])}); largest step-to-step jump x{fmt(s['largest_jump'])} at step "
           f"{s['largest_jump_step']}{where}.")
    evidence = {"onset_step": s["onset"], "spike_steps": s["spike_steps"], "healthy_median_grad_norm": s["healthy_median"],
                "largest_jump": s["largest_jump"], "largest_jump_step": s["largest_jump_step"],
                "peak_grad_norm": s["peak"], "threshold": opts["spike"], "suggested_max_norm": s["max_norm"],
                "layer_jump": s["layer_jump"], "lr": t.lr, "optimizer": t.optimizer}
    from gradcheck_cli import fixes as X

    # The lower learning rate first: verified, it removes the spikes of both train_grad_spikes.py and
    # train_diverging_mlp.py; clipping at 2x the healthy median removes those of the first only
    # (docs/calibration.md, "Verified fixes").
    fixes = [X.fix(f"Lower the learning rate ({lr_phrase(t)} with {t.optimizer}) or add a warmup.", X.lr_probe()),
             X.fix(f"Clip the gradient norm before each optimizer step: torch.nn.utils.clip_grad_norm_("
                   f"model.parameters(), max_norm={s['max_norm']:g}) (2x the median norm of the healthy steps, "
                   f"{fmt(s['healthy_median'])}).", X.clip(s["max_norm"])),
             X.fix("Add weight decay and normalisation layers (LayerNorm/BatchNorm) to keep the weights' scale "
                   "bounded.", reason=X.ARCHITECTURE)]
    return [r.finding(s["layer"], msg, evidence, fixes)]


def nonfinite_findings(stats: Any, r: Any) -> list[Any]:
    """non-finite over a rehearsal: the step of onset; whether the loss, a gradient or a weight went first;
    the first layer or op (from the diagnosis re-run of that step)."""
    from gradcheck_cli.rules._common import list_names, name

    t = stats.training
    if t is None or t.nonfinite_step is None:
        return []
    k, first = t.nonfinite_step, t.nonfinite_first
    op = None
    label = t.nonfinite_forward or t.nonfinite_backward
    for o in t.nonfinite_ops:
        if o.get("label") == label:
            op = o
    layer = (op.get("module") if op and op.get("module") != "(model)" else None) if op else label
    if layer is None and t.nonfinite_layers:
        layer = t.nonfinite_layers[0]
    at = ""
    if t.nonfinite_forward:
        at = f"; the first NaN/Inf in forward is at {name(t.nonfinite_forward) if not op else op['label']}"
    elif t.nonfinite_backward:
        at = f"; the first NaN/Inf in backward is at {name(t.nonfinite_backward) if not op else op['label']}"
    what = {"loss": "the loss went non-finite first",
            "gradient": "a gradient went non-finite first (the loss was still finite)",
            "weight": "the weights went non-finite first, in that step's update (loss and gradients were finite)"}
    prev = finite_prefix(t.losses)
    history = f" (loss {prev[0]:.4g} at step 0, {prev[-1]:.4g} at step {len(prev) - 1})" if prev else ""
    msg = (f"NaN/Inf appears at training step {k} of {t.steps_requested}: {what.get(first or '', 'values went non-finite')}"
           f"{at}{history}.")
    if t.nonfinite_layers:
        msg = msg[:-1] + f"; layers hit: {list_names(t.nonfinite_layers, 3)}."
    evidence = {"onset_step": k, "first": first, "first_nonfinite_forward": t.nonfinite_forward,
                "first_nonfinite_backward": t.nonfinite_backward, "layers": t.nonfinite_layers,
                "lr": t.lr, "optimizer": t.optimizer, "losses": t.losses}
    if op:
        evidence.update({"op": op.get("op"), "file": op.get("file"), "line": op.get("line")})
    s = grad_spikes(t, 10.0, 4)
    clip = s["max_norm"] if s else 1.0
    fixes = []
    if op and op.get("op") in ("log", "log2", "log10", "log1p", "logit"):
        fixes.append(f"log() of 0 at {op['file']}:{op['line']} once the outputs grow confident: use F.log_softmax / "
                     "F.cross_entropy / nn.BCEWithLogitsLoss, or torch.log(x + 1e-8).")
    elif op and op.get("op") in ("exp", "expm1", "pow"):
        fixes.append(f"{op['op']}() overflows at {op['file']}:{op['line']} once its input grows: clamp it "
                     "(torch.exp(x.clamp(max=80))) or use torch.logsumexp / F.softmax.")
    elif op:
        fixes.append(f"Guard {op['op']}() at {op['file']}:{op['line']} (add an epsilon or clamp its input).")
    else:
        fixes.append("Use the numerically stable fused forms (F.log_softmax / F.cross_entropy, nn.BCEWithLogitsLoss, "
                     "torch.logsumexp) and add epsilons to divisions and logs.")
    from gradcheck_cli import fixes as X

    fixes += [X.fix(f"Lower the learning rate ({lr_phrase(t)} with {t.optimizer}) and clip the gradient norm: "
                    f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={clip:g}).",
                    X.lr_probe(), X.clip(clip)),
              X.fix("Under fp16 use torch.amp.GradScaler (it skips overflowing steps), or bf16.",
                    reason="changes the precision of the training setup")]
    return [r.finding(layer, msg, evidence, fixes)]


def died_findings(stats: Any, opts: dict[str, Any], r: Any) -> list[Any]:
    """dead-relus over a rehearsal: units alive at step 0 that died during training, and when."""
    from gradcheck_cli.rules._common import fmt, name, pct

    t = stats.training
    if t is None or t.steps < opts["min_train_steps"]:
        return []
    died = relus_died(t, opts["min_dead_steps"])
    bad = {k: v for k, v in died.items() if v["units"] >= opts["min_units"]
           and v["died"] / v["units"] >= opts["died_fraction"]}
    if not bad:
        return []
    worst = max(bad, key=lambda k: bad[k]["died"] / bad[k]["units"])
    w = bad[worst]
    msg = (f"ReLU units die during training: in {name(worst)} {w['died']} of {w['units']} units "
           f"({pct(w['died'] / w['units'])}) fired at step 0 and stopped firing for good from step "
           f"{w['first_death_step']} (median step {w['median_death_step']}), with {t.optimizer}"
           + (f"; {len(bad) - 1} more layer{'s' if len(bad) > 2 else ''} too." if len(bad) > 1 else "."))
    evidence = {"onset_step": w["first_death_step"], "died": bad, "threshold": opts["died_fraction"],
                "lr": t.lr, "optimizer": t.optimizer, "steps": t.steps}
    from gradcheck_cli import fixes as X
    from gradcheck_cli.stats import ACTIVATION

    lower = round_sig(t.lr / 10) if t.lr else None
    fixes = [X.fix(f"Lower the learning rate (e.g. {lower:g}): one large step pushes a unit's bias negative for every "
                   "input." if lower else "Lower the learning rate: one large step pushes a unit's bias negative for "
                   "every input.", X.lr_probe()),
             X.fix(f"Replace the ReLU {name(worst)} with nn.LeakyReLU(0.01) (or GELU/ELU) so dead units can recover.",
                   X.swap(list(bad), "leaky-relu") if all(
                       (stats.layer(k) is not None and stats.layer(k).role == ACTIVATION) for k in bad) else None,
                   reason="the ReLU is a call in forward's code (F.relu), not a module gradcheck can swap"),
             X.fix("Add a warmup and clip the gradient norm (torch.nn.utils.clip_grad_norm_); add BatchNorm before the "
                   "ReLUs.", reason=X.ARCHITECTURE)]
    return [r.finding(worst, msg, evidence, fixes)]
