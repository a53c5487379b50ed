"""--verify-fixes: apply each mechanical fix to a deep copy of the model, re-run the same check (same seed,
same batches, same loss; for a training rehearsal the same optimizer, steps and learning rate), and record
whether the finding is gone, what its key number became, and what appeared that was not there before.

This module selects the findings, runs each changed copy and fills `finding.verification`. The changes to a
module are made by gradcheck_cli/verify_apply.py (the only place that changes one, always on a `copy.deepcopy`
of the model, never the user's object); the comparison before/after is gradcheck_cli/verify_compare.py (pure).
Each fix is its own copy and its own run; fixes are never combined beyond the steps one fix lists.
A run's result is shared by every finding that lists the same change (one re-run per distinct change).
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
from gradcheck_cli.findings import Finding, Report
from gradcheck_cli.stats import RunStats
from gradcheck_cli.verify_apply import NotApplicable, apply_steps
from gradcheck_cli.verify_compare import compare, key_metric

MODES = ("off", "failing", "all")


# --- which findings --------------------------------------------------------------------------------------------
def to_verify(report: Report, mode: str) -> list[Finding]:
    """`failing`: the findings that decide the exit code (at or above --fail-on, not suppressed); `all`:
    every finding that lists a fix."""
    if mode == "all":
        return [f for f in report.sorted_findings() if f.fixes]
    failing = {id(f) for f in report.failing()}
    return [f for f in report.sorted_findings() if id(f) in failing and f.fixes]


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
