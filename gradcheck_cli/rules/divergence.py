from __future__ import annotations

from typing import Any

from gradcheck_cli import fixes as X
from gradcheck_cli.findings import Finding, Severity
from gradcheck_cli.rules._common import fmt
from gradcheck_cli.rules.base import Option, Rule, rule
from gradcheck_cli.rules.trajectory import divergence, finite_prefix, grad_spikes, lr_phrase, oscillation, round_sig
from gradcheck_cli.stats import RunStats


@rule(
    id="loss-divergence",
    code="GC110",
    severity=Severity.ERROR,
    options=(
        Option("rise", 10.0, "fire when the loss rises above this multiple of its step-0 value"),
        Option("oscillation_growth", 4.0, "fire when the loss swings grow by this factor (last third vs first)"),
        Option("alternation", 0.7, "... and at least this share of consecutive loss changes alternate in sign",
               maximum=1.0),
        Option("min_steps", 6, "training steps needed before oscillation is judged"),
    ),
)
def loss_divergence(stats: RunStats, opts: dict[str, Any], r: Rule) -> list[Finding]:
    """The training loss rises by orders of magnitude, or oscillates with growing amplitude (--train-steps).

    What it does:
        Reads the loss of every step of the training rehearsal (`--train-steps N`). It fires when the
        loss rises above `rise` (10) times its value at step 0, and reports the step where the rise
        started (the lowest loss before it) and the learning rate. It also fires when the step-to-step
        changes alternate in sign (at least `alternation`, 70%, of them) with swings that grow by
        `oscillation_growth` (4x) from the first third of the run to the last and reach a tenth of the
        initial loss: the signature of a step size beyond the stable range. Healthy noise neither grows
        nor goes above the initial loss by an order of magnitude, so it stays silent; a loss that falls
        to ~0 is success.

    Why it matters:
        A learning rate that is too large makes each step overshoot the minimum by more than the last;
        the loss grows geometrically, the weights blow up and, a few steps later, overflow to Inf/NaN.
        In a real run this costs the GPU-hours until someone looks at the curve.

    Example:
        examples/train_diverging_mlp.py: an MLP trained with SGD at lr 3.0; the loss passes 10x its
        initial value within a few steps. Its healthy twin, examples/train_healthy_mlp.py with SGD
        momentum 0.9 at lr 0.05, learns its synthetic batches to ~0 loss.

    Fix:
        Lower the learning rate by 10x (and use a warmup for Adam-type optimizers); clip the gradient
        norm with torch.nn.utils.clip_grad_norm_ at a small multiple of the healthy steps' norm; check
        the loss is normalised (mean, not sum, over a large batch); add normalisation layers.

    References:
        Goodfellow, Bengio & Courville, Deep Learning, 8.2 and 11.4.1 (learning rate as the most important
        hyperparameter); Karpathy, "A Recipe for Training Neural Networks" (2019); Smith, "Cyclical
        Learning Rates" (2017): the LR range test reads the same divergence.
    """
    t = stats.training
    if t is None or t.steps < 2:
        return []
    d = divergence(t, opts["rise"])
    osc = None if d is not None else oscillation(t, opts["oscillation_growth"], opts["alternation"],
                                                 opts["min_steps"])
    if d is None and osc is None:
        return []
    spikes = grad_spikes(t, 10.0, 4)
    lower = round_sig(t.lr / 10) if t.lr else None
    fixes = [X.fix(f"Lower the learning rate 10x (--lr {lower:g} for this rehearsal; in your optimizer "
                   f"lr={lower:g})." if lower else "Lower the learning rate 10x.", X.lr_probe())]
    if spikes is not None:
        fixes.append(X.fix("Clip the gradient norm before each optimizer step: torch.nn.utils.clip_grad_norm_("
                           f"model.parameters(), max_norm={spikes['max_norm']:g}) (2x the healthy steps' median norm "
                           f"{fmt(spikes['healthy_median'])}).", X.clip(spikes["max_norm"])))
    else:
        fixes.append(X.fix("Clip the gradient norm before each optimizer step: "
                           "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0).", X.clip(1.0)))
    fixes += [X.fix("Use a learning-rate warmup (e.g. torch.optim.lr_scheduler.LinearLR over the first few hundred "
                    "steps), especially with Adam/AdamW.", reason=X.OPTIMIZER_CHANGE),
              X.fix("Check the loss is averaged over the batch (reduction='mean'), and normalise inputs.",
                    reason=X.CODE_CHANGE)]
    losses = finite_prefix(t.losses)
    evidence: dict[str, Any] = {"lr": t.lr, "optimizer": t.optimizer, "steps": t.steps, "initial_loss": losses[0],
                                "threshold": opts["rise"], "losses": t.losses}
    if d is not None:
        evidence.update({"onset_step": d["onset"], "exceeded_at_step": d["exceed"], "peak_loss": d["peak"],
                         "peak_step": d["peak_step"], "rise": d["peak"] / d["initial"]})
        went = " and then became NaN/Inf" if len(losses) < len(t.losses) else ""
        msg = (f"The training loss diverges: it started rising at step {d['onset']} and went from "
               f"{fmt(d['initial'])} at step 0 to {fmt(d['peak'])} at step {d['peak_step']} "
               f"(x{fmt(d['peak'] / d['initial'])}){went}, with {t.optimizer}.")
    else:
        evidence.update({"onset_step": osc["onset"], "alternation": osc["alternation"],
                         "amplitude_growth": osc["growth"], "oscillation_threshold": opts["oscillation_growth"]})
        msg = (f"The training loss oscillates with growing amplitude from step {osc['onset']}: "
               f"{round(100 * osc['alternation'])}% of its changes alternate in sign and the swings grow "
               f"x{fmt(osc['growth'])} over {t.steps} steps, with {t.optimizer}.")
    return [r.finding(None, msg, evidence, fixes)]


RULE = loss_divergence
