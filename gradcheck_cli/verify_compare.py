"""--verify-fixes, the comparison: was a finding resolved by a change, what its key number became, and what
appeared after the change that was not there before. Pure (no torch): it reads the findings of the run as given,
the findings of the changed run and the changed run's RunStats. gradcheck_cli/verify.py calls it for each run.
"""

from __future__ import annotations

import math
from typing import Any

from gradcheck_cli.findings import Finding, Severity
from gradcheck_cli.rules.trajectory import finite_prefix
from gradcheck_cli.stats import RunStats


# --- the key number -------------------------------------------------------------------------------------------
def key_metric(f: Finding) -> tuple[str, float] | None:
    """(name, value) of the finding's main evidence number (baseline.metric, plus update-ratio)."""
    from gradcheck_cli.baseline import metric

    m = metric(f)
    if m is not None:
        return m[0], m[1]
    ev = f.evidence
    for key in ("median_large_update_ratio", "median_update_ratio"):
        v = ev.get(key)
        if isinstance(v, dict) and v:
            vals = [x for x in v.values() if isinstance(x, (int, float))]
            if vals:
                return key, (max(vals) if key == "median_large_update_ratio" else min(vals))
    if isinstance(ev.get("died"), dict) and f.code == "GC105":   # ReLU units that died during the rehearsal
        vals = [x["died"] / x["units"] for x in ev["died"].values() if isinstance(x, dict) and x.get("units")]
        if vals:
            return "died_fraction", max(vals)
    if f.code == "GC103" and "first" in ev and isinstance(ev.get("onset_step"), int):   # NaN/Inf in training
        return "nonfinite_training", 1.0
    if isinstance(ev.get("spike_steps"), list):   # gradient-norm spikes during the rehearsal
        return "spike_steps", float(len(ev["spike_steps"]))
    if isinstance(ev.get("upstream_parameters"), (int, float)):   # no learning signal: parameters cut off
        return "upstream_parameters", float(ev["upstream_parameters"])
    if isinstance(ev.get("params_not_in_optimizer"), list) and f.code == "GC111":
        return "params_not_in_optimizer", float(len(ev["params_not_in_optimizer"]))
    return None


def key_after(name: str, f: Finding, stats: RunStats) -> float | None:
    """The same number measured on the changed model when the finding is gone (the rule did not report
    it, so it is computed from the statistics the rule reads)."""
    from gradcheck_cli import stats as S
    from gradcheck_cli.rules._common import depth_ratio

    # A covered layer that is gone from the statistics was removed (nn.Identity is not measured): nothing
    # of it can saturate or die any more.
    covered = [stats.layer(n) for n in f.layers]
    if name == "early_late_ratio":
        d = depth_ratio(stats, 2)
        return d["ratio"] if d else None
    if name == "time_grad_ratio":
        l = stats.layer(f.layer or "")
        if l is None:
            return None
        return l.time_grad_min_max if l.bidirectional else l.time_grad_first_last
    if name == "total_grad_norm":
        return stats.total_grad_norm
    if name == "nonfinite_loss_steps":
        return float(sum(1 for v in stats.losses if not math.isfinite(v)))
    if name == "saturated_fraction":
        # a layer that is no longer sigmoid/tanh has no saturated outputs
        vals = [(l.saturated_fraction or 0.0) if l is not None and l.activation in (S.SIGMOID, S.TANH) else 0.0
                for l in covered]
        return max(vals) if vals else None
    if name == "dead_units":
        vals = [(l.dead_fraction or 0.0) if l is not None and l.activation == S.RELU else 0.0 for l in covered]
        return max(vals) if vals else None
    if name == "upstream_parameters":   # trainable parameters of weight layers with an exactly-zero gradient
        return float(sum(l.trainable_params for l in stats.layers
                         if l.role == S.PARAM and l.trainable_params and l.grad_norm == 0))
    if name == "parameters":
        return float(len(stats.unused_parameters) + len(stats.zero_grad_parameters))
    if name == "ratio" and f.code == "GC107":
        c = stats.loss_classes
        if stats.losses and c and c > 1 and math.isfinite(stats.losses[0]):
            return stats.losses[0] / math.log(c)
        return None
    t = stats.training
    if t is None:
        return None
    if name == "rise":
        losses = finite_prefix(t.losses)
        if len(losses) < len(t.losses):
            return math.inf
        return max(losses) / losses[0] if losses and losses[0] > 0 else None
    if name in ("median_large_update_ratio", "median_update_ratio"):
        vals = []
        for layer in f.evidence.get(name, {}) or {}:
            rs = [v for v in t.update_ratios.get(layer, [])[1:] if v is not None]
            if rs:
                rs.sort()
                vals.append(rs[len(rs) // 2])
        if not vals:
            return None
        return max(vals) if name == "median_large_update_ratio" else min(vals)
    if name == "params_not_in_optimizer":
        return float(len(t.params_not_in_optimizer))
    if name == "amplitude_growth":   # the growth of the loss's swings, late over early (1: no growth)
        losses = finite_prefix(t.losses)
        d = [b - a for a, b in zip(losses, losses[1:])]
        if len(d) < 4:
            return None
        k = max(2, len(d) // 3)
        early, late = sum(abs(x) for x in d[:k]) / k, sum(abs(x) for x in d[-k:]) / k
        return late / early if early > 0 else None
    if name == "died_fraction":
        from gradcheck_cli.rules.trajectory import relus_died

        died = relus_died(t, 3)
        vals = [died[n]["died"] / died[n]["units"] for n in f.layers if n in died and died[n]["units"]]
        return max(vals) if vals else 0.0
    if name == "nonfinite_training":
        return 1.0 if t.nonfinite_step is not None else 0.0
    if name == "spike_steps":
        from gradcheck_cli.rules.trajectory import grad_spikes

        thr = f.evidence.get("threshold", 10.0)
        sp = grad_spikes(t, thr if isinstance(thr, (int, float)) else 10.0, 4)
        return float(len(sp["spike_steps"])) if sp else 0.0
    return None


# --- matching a finding before and after ----------------------------------------------------------------------
def same_finding(a: Finding, b: Finding) -> bool:
    """b (after the change) is the same problem as a (before): same rule, same key number, and for findings
    about particular layers at least one layer in common."""
    if a.code != b.code:
        return False
    ka, kb = key_metric(a), key_metric(b)
    if (ka[0] if ka else None) != (kb[0] if kb else None):
        return False
    if ka is not None and ka[0] in ("early_late_ratio", "total_grad_norm", "nonfinite_loss_steps", "ratio", "rise",
                                    "amplitude_growth", "parameters", "upstream_parameters", "spike_steps",
                                    "nonfinite_training"):
        return True   # model-wide numbers
    if a.layer is None or b.layer is None:
        return a.layer == b.layer
    return bool(set(a.layers) & set(b.layers))


def _counts(f: Finding) -> bool:
    return f.active and f.severity.rank >= Severity.WARNING.rank


def compare(before: Finding, before_all: list[Finding], after: list[Finding], stats: RunStats) -> dict[str, Any]:
    """resolved, before, after and new_findings for one finding and one changed run."""
    bar = min(before.severity.rank, Severity.WARNING.rank)
    remaining = [g for g in after if same_finding(before, g) and g.severity.rank >= bar]
    same_any = [g for g in after if same_finding(before, g)]
    km = key_metric(before)
    out: dict[str, Any] = {"resolved": not remaining, "metric": km[0] if km else None,
                           "before": km[1] if km else None, "after": None}
    if km is not None:
        match = next((key_metric(g) for g in remaining + same_any if key_metric(g) and key_metric(g)[0] == km[0]),
                     None)
        out["after"] = match[1] if match else key_after(km[0], before, stats)
    if remaining and remaining[0].severity != before.severity:
        out["severity_after"] = remaining[0].severity.value
    # New: rules reporting at warning/error after the change that did not before (by rule id, as the
    # contract says: a rule that already reported something is not new, wherever it points now).
    had = {b.rule for b in before_all if _counts(b)}
    new = []
    for g in after:
        if _counts(g) and g.rule not in had and g.rule not in new:
            new.append(g.rule)
    out["new_findings"] = new
    return out
