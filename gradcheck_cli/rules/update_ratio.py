from __future__ import annotations

from typing import Any

from gradcheck_cli import fixes as X
from gradcheck_cli.findings import Finding, Severity
from gradcheck_cli.rules._common import fmt, list_names, name
from gradcheck_cli.rules.base import Option, Rule, rule
from gradcheck_cli.rules.trajectory import finite_prefix, median, round_sig
from gradcheck_cli.stats import RunStats


@rule(
    id="update-ratio",
    code="GC111",
    severity=Severity.WARNING,
    options=(
        Option("high", 0.1, "warn when a layer's |update|/|weight| is above this in `high_steps` steps after step 0"),
        Option("high_steps", 2, "... in at least this many steps (Adam's first update, step 0, is not counted)"),
        Option("low", 1e-6, "warn when it is below this while the loss is not going down"),
        Option("learned", 0.1, "the loss counts as going down once it falls below this share of step 0's"),
        Option("min_steps", 3, "training steps needed before update sizes are judged"),
    ),
)
def update_ratio(stats: RunStats, opts: dict[str, Any], r: Rule) -> list[Finding]:
    """Optimizer steps far too large or too small for the weights, or layers the optimizer never updates.

    What it does:
        In the training rehearsal (`--train-steps N`) it measures, per layer and per step, the size of
        the optimizer's update relative to the weights, |w_after - w_before| / |w_before|. Healthy
        training sits around 1e-3. It warns when a layer's ratio is above `high` (0.1: a step rewrites a
        tenth of the weights or more) in `high_steps` (2) steps or more; when its median over the steps
        is below `low` (1e-6) while the
        loss has not fallen below `learned` (10%) of its initial value (steps too small to learn
        anything; a loss going to ~0 with shrinking updates is success, not this); and when a layer that
        receives a gradient is never changed at all, naming the parameters missing from every parameter
        group of the optimizer. Step 0 is not counted toward `high` (Adam's first update is relatively
        large by design); an embedding is judged as a whole, so rows missing from a batch do not count.

    Why it matters:
        Updates far above 1e-3 of the weights overshoot (the loss jumps, ReLUs die, weights grow without
        bound); updates far below make training stall while looking healthy; a layer left out of the
        optimizer (an optimizer built before a head was added, a wrong `model.encoder.parameters()`)
        silently stays at its initialisation.

    Example:
        examples/train_update_too_large.py (Adam at lr 0.5), examples/train_lr_typo.py (Adam at lr
        1e-9), examples/train_missing_params.py (the optimizer built over the encoder only).

    Fix:
        Scale the learning rate so the typical ratio is ~1e-3 (the finding computes the factor); build the
        optimizer over model.parameters() (or add the missing parameters as a param group); check for a
        learning-rate typo or a scheduler that starts at 0.

    References:
        Karpathy, CS231n "Neural Networks Part 3" (ratio of updates to weights ~1e-3); Goodfellow,
        Bengio & Courville, Deep Learning 11.4.1.
    """
    t = stats.training
    if t is None or t.steps < opts["min_steps"]:
        return []
    findings: list[Finding] = []
    losses = finite_prefix(t.losses)
    learning = bool(losses) and losses[0] > 0 and min(losses) < opts["learned"] * losses[0]
    high: list[tuple[str, float, float, int]] = []
    low: list[tuple[str, float]] = []
    frozen: list[str] = []
    for layer, rs in t.update_ratios.items():
        vals = [v for v in rs if v is not None]
        if not vals:
            continue
        got_grad = any(g > 0 for g in finite_prefix(t.layer_grad_norms.get(layer, [])))
        if not got_grad:
            continue   # no gradient (unused parameters): not the optimizer's fault
        if all(v == 0 for v in vals):
            frozen.append(layer)
            continue
        m = median(vals)
        if m is None:
            continue
        over = [v for v in rs[1:] if v is not None and v > opts["high"]]
        if len(over) >= opts["high_steps"]:
            peak = max(range(len(rs)), key=lambda i: rs[i] if rs[i] is not None else -1.0)
            high.append((layer, median(over), rs[peak], peak))
        elif m < opts["low"] and not learning:
            low.append((layer, m))
    lr_txt = f"lr {t.lr:g}" if t.lr is not None else "its learning rate"
    if high:
        high.sort(key=lambda x: -x[1])
        layer, m, peak, peak_step = high[0]
        over_steps = [i for i, v in enumerate(t.update_ratios[layer]) if i > 0 and v is not None and v > opts["high"]]
        better = round_sig(t.lr * 1e-3 / m) if t.lr else None
        msg = (f"Optimizer steps are too large: {len(high)} layer{'s' if len(high) > 1 else ''} change by more than "
               f"{fmt(opts['high'])} of their weights in {len(over_steps)} steps from step {over_steps[0]} (worst "
               f"{name(layer)}: up to {fmt(peak)} at step {peak_step}; healthy is ~1e-3), with {t.optimizer}.")
        ev = {"median_large_update_ratio": {l: v for l, v, _, _ in high}, "threshold": opts["high"], "lr": t.lr,
              "optimizer": t.optimizer, "worst_step": peak_step, "onset_step": over_steps[0], "steps_over": over_steps,
              "update_ratios": t.update_ratios.get(layer)}
        fixes = [X.fix(f"Lower the learning rate to about {better:g} (x{fmt(better / t.lr)}) so updates are ~1e-3 of "
                       "the weights." if better else "Lower the learning rate so updates are ~1e-3 of the weights.",
                       X.lr_scale(better / t.lr) if better else X.lr_probe((1 / 10, 1 / 100, 1 / 1000))),
                 X.fix("Use a warmup (torch.optim.lr_scheduler.LinearLR) and clip the gradient norm "
                       "(torch.nn.utils.clip_grad_norm_).", reason=X.OPTIMIZER_CHANGE)]
        findings.append(r.finding(layer, msg, ev, fixes))
    if low:
        low.sort(key=lambda x: x[1])
        layer, m = low[0]
        better = round_sig(t.lr * 1e-3 / m) if t.lr else None
        msg = (f"Optimizer steps are too small to learn: {len(low)} layer{'s' if len(low) > 1 else ''} change by "
               f"less than {fmt(opts['low'])} of their weights per step (worst {name(layer)}: median {fmt(m)}) and "
               f"the loss does not go down ({fmt(losses[0])} -> {fmt(losses[-1])} over {t.steps} steps), with "
               f"{t.optimizer}.")
        ev = {"median_update_ratio": dict(low), "threshold": opts["low"], "lr": t.lr, "optimizer": t.optimizer,
              "initial_loss": losses[0], "final_loss": losses[-1], "onset_step": 0}
        fixes = [X.fix(f"Check the learning rate for a typo: about {better:g} would give updates of ~1e-3 of the "
                       "weights." if better else "Raise the learning rate so updates are ~1e-3 of the weights.",
                       X.lr_scale(better / t.lr) if better else None, reason="the learning rate is not known"),
                 X.fix("Check the scheduler does not start at (or decay to) 0, and that the loss is not scaled down.",
                       reason=X.NOTHING)]
        findings.append(r.finding(layer, msg, ev, fixes))
    if frozen:
        missing = [p for l in frozen for p in t.layer_params.get(l, []) if p in t.params_not_in_optimizer]
        if missing:
            msg = (f"{len(frozen)} layer{'s receive' if len(frozen) > 1 else ' receives'} a gradient but never "
                   f"change{'s' if len(frozen) == 1 else ''} in {t.steps} steps from step 0 ({list_names(frozen)}): "
                   f"{len(missing)} of their "
                   f"parameters are in no parameter group of the optimizer ({list_names(missing)}).")
            fixes = [X.fix("Build the optimizer over every trainable parameter: torch.optim.AdamW(model.parameters(), "
                           f"...), or add the missing ones as a group: optimizer.add_param_group({{'params': "
                           f"model.{frozen[0]}.parameters()}}).", X.add_to_optimizer(missing))]
        else:
            msg = (f"{len(frozen)} layer{'s receive' if len(frozen) > 1 else ' receives'} a gradient but the "
                   f"optimizer never changes {'them' if len(frozen) > 1 else 'it'} in {t.steps} steps from step 0 "
                   f"({list_names(frozen)}): "
                   f"a learning rate of 0 in {'their' if len(frozen) > 1 else 'its'} parameter group?")
            fixes = ["Check the learning rate of their parameter group and the scheduler (lr 0 freezes a group); "
                     "freeze on purpose with requires_grad_(False) instead."]
        findings.append(r.finding(frozen[0], msg, {"layers": frozen, "params_not_in_optimizer": missing,
                                                   "onset_step": 0, "optimizer": t.optimizer}, fixes))
    return findings


RULE = update_ratio
