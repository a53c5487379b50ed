from __future__ import annotations

from typing import Any

from gradcheck_cli import fixes as X
from gradcheck_cli import stats as S
from gradcheck_cli.findings import Finding, Severity
from gradcheck_cli.rules._common import (
    describe_group, fmt, has_normalization, list_names, name, pct, preceding_param_layer, signal_cut,
)
from gradcheck_cli.rules.base import Option, Rule, rule
from gradcheck_cli.rules.trajectory import died_findings
from gradcheck_cli.stats import RunStats


@rule(
    id="dead-relus",
    code="GC105",
    severity=Severity.WARNING,
    options=(Option("fraction", 0.5, "warn when at least this share of a ReLU layer's units is dead", maximum=1.0),
             Option("min_units", 16, "ignore partly dead ReLU layers with fewer units than this (squeeze-excite "
                                     "bottlenecks of 4-8 units seen on a few pooled examples)"),
             Option("died_fraction", 0.25, "--train-steps: warn when this share of a layer's units fired at step 0 "
                    "and died during training", maximum=1.0),
             Option("min_dead_steps", 3, "--train-steps: a unit counts as died once silent for the last this many "
                    "steps (and at least the last quarter of the run)"),
             Option("min_train_steps", 8, "--train-steps: steps needed before units dying is judged")),
)
def dead_relus(stats: RunStats, opts: dict[str, Any], r: Rule) -> list[Finding]:
    """ReLU units that output zero for every example, so they never get a gradient again.

    What it does:
        For every nn.ReLU / nn.ReLU6 module and every F.relu / torch.relu call it can see, it counts the
        units (features; channels for convolutions) that were exactly zero for every example of every
        pass. It fires when at least `fraction` (0.5) of a layer's units are dead, in layers of at least
        `min_units` (16) units (squeeze-excite bottlenecks of 4-8 units see only a few pooled examples),
        and shows the bias of the weight layer feeding it. When a fully dead layer, of any width, cuts the
        gradient to every weight layer before it (no learning signal at all), it is an error located at
        that layer; after the last Linear the fix is to remove the ReLU (logits must be able to go
        negative).

        With `--train-steps N` it also follows each unit through the training rehearsal and reports
        units that fired at step 0 and then stopped firing for good (silent for at least the last
        `min_dead_steps` steps and the last quarter of the run), when at least `died_fraction` (25%)
        of a layer's units did so, with the step they died: the real "dying ReLU" of too-large steps.

    Why it matters:
        A ReLU's derivative is 0 for negative inputs: a unit whose input is negative for every example gets
        no gradient, its incoming weights never change, and it stays dead for the rest of training. Dead
        units are capacity you pay for and cannot use; a fully dead layer cuts the gradient to everything
        before it.

    Example:
        examples/dead_relu.py: the hidden Linear layers' biases are initialised to -3 (think: a too-large
        learning-rate step that pushed them negative), and 100% of the ReLU units are dead: an error.
        examples/relu_after_output.py: a ReLU after the 3-unit output layer, all 3 units dead.

    Fix:
        Use LeakyReLU (slope 0.01-0.02), PReLU or ELU, which keep a gradient for negative inputs;
        re-initialise biases to 0 and weights with He/Kaiming; add BatchNorm before the ReLU; lower the
        learning rate (large steps kill ReLUs).

    References:
        SageMaker Debugger "dead ReLU" rule (unit active in < 1% of samples, layer flagged at > 50%);
        AUTOTRAINER (ICSE'21): >= 70% of gradients exactly zero; DeepDiagnosis (ICSE'22).
    """
    out: list[Finding] = []
    bad = [l for l in stats.layers if l.activation == S.RELU and l.dead_fraction is not None
           and (l.units or 0) >= opts["min_units"] and l.dead_fraction >= opts["fraction"]]
    cut = signal_cut(stats)
    if cut is not None and cut["cause"] == "dead-relu":   # one cause, one finding: the cut, with the others
        return [_cut_finding(stats, cut, [l for l in bad if l is not cut["cut_layer"]], r)]
    if not bad:
        return out + died_findings(stats, opts, r)   # alive at step 0: did training kill them?
    worst = max(bad, key=lambda l: l.dead_fraction)
    evidence: dict[str, Any] = {"threshold": opts["fraction"],
                                "dead_units": {l.name: {"dead": l.dead_units, "units": l.units} for l in bad}}
    biases = {}
    for l in bad:
        p = preceding_param_layer(stats, l)
        if p is not None and p.bias_mean is not None:
            biases[p.name] = p.bias_mean
    if biases:
        evidence["feeding_bias_mean"] = biases
    msg = (f"{len(bad)} ReLU layer{'s have' if len(bad) > 1 else ' has'} mostly dead units (worst "
           f"{name(worst.name)}: {worst.dead_units} of {worst.units} units, {pct(worst.dead_fraction)}, output 0 "
           f"for every example; threshold {pct(opts['fraction'])}).")
    feeders = list(dict.fromkeys(p.name for p in (preceding_param_layer(stats, l) for l in bad)
                                 if p is not None and p.weight_rms is not None))
    fixes = [X.fix(f"Replace {describe_group(bad)} with nn.LeakyReLU(0.01) (or nn.PReLU / nn.ELU) so negative "
                   "inputs still pass a gradient.",
                   X.swap([l.name for l in bad], "leaky-relu") if all(l.role == S.ACTIVATION for l in bad) else None,
                   reason="the ReLUs are calls in forward's code (F.relu), not modules gradcheck can swap")]
    negative = {k: v for k, v in biases.items() if v < -0.1}
    if negative:
        k, v = next(iter(negative.items()))
        # With the biases pushing every unit below 0, LeakyReLU(0.01) passes 1% of the signal per layer (a
        # vanishing gradient after the swap, verified); resetting the biases removes the cause: first.
        fixes.insert(0, X.fix(f"Reset the negative biases feeding them (e.g. `{k}.bias` has mean {fmt(v)}) with "
                           "torch.nn.init.zeros_, and initialise weights with kaiming_normal_(nonlinearity='relu').",
                           X.init(feeders, "kaiming-normal", nonlinearity="relu")))
    else:
        fixes.append(X.fix("Initialise the weights feeding them with torch.nn.init.kaiming_normal_(w, "
                           "nonlinearity='relu') and biases with zeros_.",
                           X.init(feeders, "kaiming-normal", nonlinearity="relu")))
    if not has_normalization(stats):
        fixes.append(X.fix("Add nn.BatchNorm1d/2d before each ReLU so each unit sees inputs on both sides of 0.",
                           reason=X.ARCHITECTURE))
    fixes.append(X.fix("Lower the learning rate: one large step can push a unit's bias negative for good.",
                       reason="at step 0 the units are already dead: a learning rate changes the steps after, "
                              "not the dead units in hand"))
    out.append(r.finding(bad[0].name, msg, evidence, fixes, covers=[l.name for l in bad]))
    return out + died_findings(stats, opts, r)


def _cut_finding(stats: RunStats, cut: dict, others: list, r: Rule) -> Finding:
    """A fully dead ReLU layer that cuts the gradient to every weight before it: no learning signal."""
    layer = cut["cut_layer"]
    up = cut["upstream"]
    p = preceding_param_layer(stats, layer)
    n_up = sum(l.trainable_params for l in up)
    msg = (f"No learning signal: every unit of {name(layer.name)} ({layer.units} of {layer.units}) outputs 0 for "
           f"every example, so the {len(up)} weight layer{'s' if len(up) != 1 else ''} before it ({n_up:,} "
           "parameters) get an exactly-zero gradient in every step.")
    evidence: dict[str, Any] = {"cut_at": layer.name, "units": layer.units, "dead_units": layer.dead_units,
                                "upstream_layers": [l.name for l in up], "upstream_parameters": n_up,
                                "cause": "dead-relu"}
    evidence["dead_units"] = {l.name: {"dead": l.dead_units, "units": l.units} for l in [layer] + others}
    if others:
        msg += f" {len(others)} more ReLU layer{'s are' if len(others) > 1 else ' is'} mostly dead ({list_names([l.name for l in others])})."
    if p is not None and p.bias_mean is not None:
        evidence["feeding_bias_mean"] = {p.name: p.bias_mean}
    fixes = []
    if cut["after_last_weight"]:
        fixes.append(X.fix(f"Remove the ReLU after the last Linear ({name(layer.name)}): logits must be able to go "
                           "negative. Return the raw outputs and let the loss (F.cross_entropy, BCEWithLogitsLoss) "
                           "apply softmax/sigmoid.",
                           X.remove([layer.name]) if layer.role == S.ACTIVATION else None,
                           reason="the ReLU is a call in forward's code (F.relu), not a module gradcheck can remove"))
    else:
        group = [layer] + others
        fixes.append(X.fix(f"Replace {describe_group(group)} with nn.LeakyReLU(0.01) (or nn.ELU) so negative "
                           "inputs still pass a gradient.",
                           X.swap([l.name for l in group], "leaky-relu") if all(l.role == S.ACTIVATION for l in group)
                           else None,
                           reason="the ReLUs are calls in forward's code (F.relu), not modules gradcheck can swap"))
    negative = []
    for l in [layer] + others:
        q = preceding_param_layer(stats, l)
        if q is not None and q.bias_mean is not None and q.bias_mean < -0.1 and q not in negative:
            negative.append(q)
    if negative:
        evidence["feeding_bias_mean"] = {q.name: q.bias_mean for q in negative}
        fixes.append(X.fix(f"Reset the negative biases feeding them ({', '.join(f'`{q.name}.bias` mean {fmt(q.bias_mean)}' for q in negative[:3])}"
                           f"{' and more' if len(negative) > 3 else ''}) with torch.nn.init.zeros_: a negative bias "
                           "keeps every unit below 0.", X.bias([q.name for q in negative], 0.0)))
        if not cut["after_last_weight"]:   # the cause first (the swap to LeakyReLU leaves 1% of the signal)
            fixes.insert(0, fixes.pop())
    return r.finding(layer.name, msg, evidence, fixes, Severity.ERROR)


RULE = dead_relus
