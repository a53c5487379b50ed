"""--verify-fixes: apply each mechanical fix to a deep copy of the model, re-run the same check (same seed,
same batches, same loss; for a training rehearsal the same optimizer, steps and learning rate), and record
whether the finding is gone, what its key number became, and what appeared that was not there before.

The fixes' actions are plain data written by the rules (gradcheck_cli/fixes.py); this module is the only
place that turns them into changes to a module, always on a `copy.deepcopy` of the model (never the user's
object). Each fix is its own copy and its own run; fixes are never combined beyond the steps one fix lists.
A run's result is shared by every finding that lists the same change (one re-run per distinct change).

The comparison is pure (no torch): `compare()` and `key_after()` read the findings and RunStats.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from gradcheck_cli import fixes as X
from gradcheck_cli.errors import GradcheckError
from gradcheck_cli.findings import Finding, Report, Severity
from gradcheck_cli.rules.trajectory import finite_prefix
from gradcheck_cli.stats import RunStats

MODES = ("off", "failing", "all")


class NotApplicable(Exception):
    """The fix's action does not fit this model (a module that is not where the statistics said, a gate)."""


# --- which findings --------------------------------------------------------------------------------------------
def to_verify(report: Report, mode: str) -> list[Finding]:
    """`failing`: the findings that decide the exit code (at or above --fail-on, not suppressed); `all`:
    every finding that lists a fix."""
    if mode == "all":
        return [f for f in report.sorted_findings() if f.fixes]
    failing = {id(f) for f in report.failing()}
    return [f for f in report.sorted_findings() if id(f) in failing and f.fixes]


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


# --- applying steps to a module (torch) -----------------------------------------------------------------------
def _module(model: Any, name: str) -> Any:
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        raise NotApplicable(f"no module named {name!r} in the model") from None


def _set_module(model: Any, name: str, new: Any) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = _module(model, parent_name)
    if child.isdigit() and hasattr(parent, "__setitem__") and not hasattr(parent, child):
        parent[int(child)] = new
    else:
        setattr(parent, child, new)


GATE_HINTS = ("gate", "gating", "squeeze", "excit", "attn", "attention")


def apply_steps(model: Any, steps: tuple[dict[str, Any], ...], seed: int) -> list[dict[str, Any]]:
    """Apply a fix's model steps to `model` (a copy), seeded; returns a detail per step (e.g. old types).
    Training steps are left to the rehearsal (TrainSettings). Raises NotApplicable."""
    import torch
    import torch.nn as nn

    details: list[dict[str, Any]] = []
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            for step in steps:
                details.append(_apply_one(model, step, nn, torch))
    finally:
        torch.random.set_rng_state(gen_state)
    return details


_ACTIVATIONS = ("Sigmoid", "Tanh", "ReLU", "ReLU6", "LeakyReLU", "ELU", "GELU", "SiLU", "Softmax", "Hardtanh",
                "Hardsigmoid", "Identity")


def _apply_one(model: Any, step: dict[str, Any], nn: Any, torch: Any) -> dict[str, Any]:
    kind = step["kind"]
    if kind in X.TRAINING_KINDS:
        return {}
    if kind == "swap-activation":
        olds = []
        for name in step["modules"]:
            m = _module(model, name)
            if type(m).__name__ not in _ACTIVATIONS or list(m.parameters(recurse=False)):
                raise NotApplicable(f"{name} is a {type(m).__name__}, not a parameter-free activation module")
            if any(h in name.lower() for h in GATE_HINTS):
                raise NotApplicable(f"{name} looks like a gate; gates keep their sigmoid")
            # (an nn.Softmax is swapped only when the rule found it over a size-1 dimension, where it is
            # constant 1 and sigmoid of that one value is the intended probability)
            to = step["to"]
            new = (nn.ReLU() if to == "relu" else nn.LeakyReLU(step.get("negative_slope", 0.01)) if to == "leaky-relu"
                   else nn.Sigmoid() if to == "sigmoid" else None)
            if new is None:
                raise NotApplicable(f"unknown activation {to!r}")
            new.train(m.training)
            _set_module(model, name, new)
            olds.append(type(m).__name__)
        kinds = sorted(set(olds))
        return {"from": "/".join(f"nn.{k}" for k in kinds)}
    if kind == "remove-module":
        for name in step["modules"]:
            m = _module(model, name)
            if list(m.parameters()):
                raise NotApplicable(f"{name} owns parameters; only parameter-free modules are removed")
            _set_module(model, name, nn.Identity())
        return {}
    if kind == "init":
        for name in step["modules"]:
            m = _module(model, name)
            w = getattr(m, "weight", None)
            if not isinstance(w, torch.Tensor) or w.dim() < 2:
                raise NotApplicable(f"{name} has no weight matrix to initialise")
            scheme = step["scheme"]
            if scheme == "kaiming-normal":
                nn.init.kaiming_normal_(w, nonlinearity=step.get("nonlinearity") or "relu")
            elif scheme == "xavier-normal":
                gain = step.get("gain")
                if gain is None:
                    gain = nn.init.calculate_gain(step["nonlinearity"]) if step.get("nonlinearity") else 1.0
                nn.init.xavier_normal_(w, gain=gain)
            elif scheme == "normal":
                nn.init.normal_(w, std=step.get("std", 0.02))
            else:
                raise NotApplicable(f"unknown init scheme {scheme!r}")
            b = getattr(m, "bias", None)
            if step.get("zero_bias") and isinstance(b, torch.Tensor):
                nn.init.zeros_(b)
        return {}
    if kind == "orthogonal":
        for pname in step["params"]:
            mod_name, _, attr = pname.rpartition(".")
            p = getattr(_module(model, mod_name), attr, None)
            if not isinstance(p, torch.Tensor) or p.dim() != 2:
                raise NotApplicable(f"{pname} is not a weight matrix")
            nn.init.orthogonal_(p, gain=step.get("gain", 1.0))
        return {}
    if kind == "bias":
        for name in step["modules"]:
            b = getattr(_module(model, name), "bias", None)
            if not isinstance(b, torch.Tensor):
                raise NotApplicable(f"{name} has no bias")
            b.fill_(step["value"])
        return {}
    if kind == "forget-bias":
        for name in step["modules"]:
            m = _module(model, name)
            if not isinstance(m, nn.LSTM):
                raise NotApplicable(f"{name} is not an nn.LSTM")
            h = m.hidden_size
            if not m.bias:
                raise NotApplicable(f"{name} has no biases (bias=False)")
            for pname, p in m.named_parameters():
                if pname.startswith("bias_"):
                    # PyTorch orders the gates (input, forget, cell, output); bias_ih + bias_hh is the bias
                    p[h:2 * h].fill_(step["value"] / 2)
        return {}
    if kind == "norm-scale":
        for name in step["modules"]:
            w = getattr(_module(model, name), "weight", None)
            if not isinstance(w, torch.Tensor):
                raise NotApplicable(f"{name} has no scale (weight)")
            w.fill_(step["value"])
        return {}
    if kind == "norm-eps":
        for name in step["modules"]:
            m = _module(model, name)
            if not hasattr(m, "eps"):
                raise NotApplicable(f"{name} has no eps")
            m.eps = max(float(m.eps or 0.0), step["value"])
        return {}
    if kind == "scale-weight":
        for name in step["modules"]:
            m = _module(model, name)
            for attr in ("weight", "bias"):
                p = getattr(m, attr, None)
                if isinstance(p, torch.Tensor):
                    p.mul_(step["factor"])
        return {}
    raise NotApplicable(f"unknown change {kind!r}")


# --- the runs ---------------------------------------------------------------------------------------------------
@dataclass
class Context:
    """What the check ran with, to run it again on a changed copy."""
    model: Any
    source: Any
    loss_fn: Any
    settings: Any
    device: Any
    rules: Callable[[RunStats], list[Finding]]
    annotate: Callable[[RunStats, Any, Any], None]
    lr: float | None = None                                       # the rehearsal's learning rate
    cache: dict[str, tuple[RunStats, list[Finding], list[dict]]] = field(default_factory=dict)


def _train_settings(s: Any, steps: tuple[dict[str, Any], ...], factor: float = 1.0) -> Any:
    from gradcheck_cli.measure.training import TrainSettings

    clip = next((st["max_norm"] for st in steps if st["kind"] == "clip-grad-norm"), None)
    add = tuple(p for st in steps if st["kind"] == "add-to-optimizer" for p in st["params"])
    for st in steps:
        if st["kind"] == "lr-scale":
            factor *= st["factor"]
    return TrainSettings(steps=s.train_steps, optimizer=s.optimizer, lr=s.lr, precision=s.precision,
                         lr_scale=factor, clip_max_norm=clip, add_params=add)


def run_changed(ctx: Context, steps: tuple[dict[str, Any], ...], lr_factor: float = 1.0
                ) -> tuple[RunStats, list[Finding], list[dict[str, Any]]]:
    """Copy, change, check (and rehearse). Cached by the change."""
    import torch

    from gradcheck_cli.deadline import set_phase
    from gradcheck_cli.measure import run_passes
    from gradcheck_cli.seeding import host_rngs_preserved

    key = json.dumps([steps, lr_factor], sort_keys=True, default=str)
    if key in ctx.cache:
        return ctx.cache[key]
    s = ctx.settings
    set_phase("verify")
    with torch.random.fork_rng(devices=[]), host_rngs_preserved():
        try:
            net = copy.deepcopy(ctx.model)
        except Exception as exc:   # noqa: BLE001 - reported as the fix's reason
            raise NotApplicable(f"the model cannot be deep-copied ({type(exc).__name__})") from None
        details = apply_steps(net, steps, s.seed)
    if hasattr(ctx.source, "replay"):
        ctx.source.replay()
    with host_rngs_preserved():
        result = run_passes(net, ctx.source, ctx.loss_fn, steps=s.steps, seed=s.seed, device=ctx.device)
    ctx.annotate(result.stats, net, ctx.loss_fn)
    if getattr(s, "train_steps", 0):
        from gradcheck_cli.measure.training import rehearse

        with host_rngs_preserved():
            traj, _ = rehearse(net, ctx.source, ctx.loss_fn, seed=s.seed, device=ctx.device, progress=None,
                               train=_train_settings(s, steps, lr_factor))
        result.stats.training = traj
    del net
    out = (result.stats, ctx.rules(result.stats), details)
    ctx.cache[key] = out
    return out


def verify_report(report: Report, ctx: Context, mode: str, progress: Callable[[int, int], None] | None = None
                  ) -> None:
    """Fill `finding.verification` for the findings `mode` selects; time spent in report.timings."""
    t0 = time.perf_counter()
    targets = to_verify(report, mode)
    plan = [(f, i, fx) for f in targets for i, fx in enumerate(f.fixes)]
    total = sum(_runs(fx) for _, _, fx in plan if _runnable(fx, ctx))
    done = 0

    def tick(n: int = 1) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(min(done, total), total)

    for f in targets:
        f.verification = []
        for i, fx in enumerate(f.fixes):
            f.verification.append(_verify_fix(report, f, i, fx, ctx, tick))
    report.timings["verify_s"] = round(time.perf_counter() - t0, 4)
    report.timings["total_s"] = round(report.timings.get("total_s", 0.0) + report.timings["verify_s"], 4)
    report.run["verification"] = {"mode": mode, "findings": len(targets),
                                  "runs": len(ctx.cache), "seconds": report.timings["verify_s"]}


def _runs(fx: str) -> int:
    """Re-runs a fix costs at most: one, or one per learning rate of a probe."""
    probe = next((st for st in X.steps_of(fx) if st["kind"] == "lr-probe"), None)
    return len(probe["factors"]) if probe else 1


def _runnable(fx: str, ctx: Context) -> bool:
    steps = X.steps_of(fx)
    return bool(steps) and (not X.needs_training(steps) or bool(getattr(ctx.settings, "train_steps", 0)))


def _verify_fix(report: Report, f: Finding, i: int, fx: str, ctx: Context, tick: Callable) -> dict[str, Any]:
    steps = X.steps_of(fx)
    if not steps:
        return {"fix": i, "change": None, "reason": X.reason_of(fx)}
    if X.needs_training(steps) and not getattr(ctx.settings, "train_steps", 0):
        return {"fix": i, "change": None, "reason": X.NEEDS_TRAINING}
    probe = next((st for st in steps if st["kind"] == "lr-probe"), None)
    try:
        if probe is not None:
            return _probe(report, f, i, steps, probe, ctx, tick)
        stats, after, details = run_changed(ctx, steps)
    except NotApplicable as exc:
        tick()
        return {"fix": i, "change": None, "reason": f"not applicable to this model: {exc}"}
    except GradcheckError as exc:
        # The changed copy failed to run (the model's code rejects a swapped module, out of memory): that
        # is this fix's result, not the run's; --timeout still stops everything.
        if getattr(exc, "reason", None) == "timeout":
            raise
        tick()
        km = key_metric(f)
        return {"fix": i, "change": "; ".join(X.describe_step(st) for st in steps), "resolved": False,
                "metric": km[0] if km else None, "before": km[1] if km else None, "after": None,
                "new_findings": [], "error": exc.one_line()}
    tick()
    change = "; ".join(X.describe_step(st, d) for st, d in zip(steps, details + [{}] * len(steps)))
    if any(st["kind"] == "lr-scale" for st in steps) and ctx.lr is not None:
        factor = math.prod(st["factor"] for st in steps if st["kind"] == "lr-scale")
        change = change.replace("learning rate x" + X.fmt(factor),
                                f"learning rate {X.fmt(ctx.lr)} -> {X.fmt(ctx.lr * factor)}")
    out = {"fix": i, "change": change, **compare(f, report.findings, after, stats)}
    if out.get("metric") == "early_late_ratio":   # the depth profile after the change (HTML draws both)
        from gradcheck_cli.rules._common import depth_profile

        out["profile_after"] = {l.name: l.output_grad_norm for l in depth_profile(stats)}
    return out


def _probe(report: Report, f: Finding, i: int, steps: tuple, probe: dict, ctx: Context, tick: Callable
           ) -> dict[str, Any]:
    """Lower the learning rate by each factor in turn (largest first) until the finding is gone: report the
    largest stable one found, and every rate tried."""
    tried = []
    result = None
    factors = list(probe["factors"])
    for n, factor in enumerate(factors):
        stats, after, _ = run_changed(ctx, tuple(st for st in steps if st["kind"] != "lr-probe"), factor)
        tick()
        res = compare(f, report.findings, after, stats)
        lr = ctx.lr * factor if ctx.lr is not None else None
        tried.append({"lr": lr, "factor": factor, "resolved": res["resolved"], "after": res["after"]})
        result = (factor, res)
        if res["resolved"]:
            tick(len(factors) - n - 1)
            break
    assert result is not None
    factor, res = result
    if ctx.lr is not None:
        change = f"learning rate {X.fmt(ctx.lr)} -> {X.fmt(ctx.lr * factor)}"
    else:
        change = f"learning rate x{X.fmt(factor)}"
    others = "; ".join(X.describe_step(st) for st in steps if st["kind"] != "lr-probe")
    if others:   # the steps listed with the probe are applied in every probe run
        change = f"{others}; {change}"
    if res["resolved"]:
        change += f" (the largest stable of {', '.join('/' + X.fmt(1 / t['factor']) for t in tried)} tried)"
    else:
        change += f" (none of {', '.join('/' + X.fmt(1 / t['factor']) for t in tried)} was stable)"
    return {"fix": i, "change": change, **res, "probe": tried}
