from __future__ import annotations

from typing import Any

from gradcheck_cli import fixes as X
from gradcheck_cli import stats as S
from gradcheck_cli.findings import Finding, Severity
from gradcheck_cli.rules._common import (
    WEIGHT_TYPES, describe_group, fmt, has_normalization, list_names, name, pct, preceding_param_layer, signal_cut,
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
                                     "bottlenecks of 4-8 units seen on a few pooled examples) unless their off "
                                     "units are far below zero"),
             Option("collapse_depth", 3, "units off on every example but near zero count as correlation collapse "
                    "(info) only with at least this many weight layers up to the ReLU; in shallower layers they are "
                    "dead (measured: 30-45% of units off by the 3rd-5th layer of a He-init MLP on 4 examples)"),
             Option("died_fraction", 0.25, "--train-steps: warn when this share of a layer's units fired at step 0 "
                    "and died during training", maximum=1.0),
             Option("min_dead_steps", 3, "--train-steps: a unit counts as died once silent for the last this many "
                    "steps (and at least the last quarter of the run)"),
             Option("min_train_steps", 8, "--train-steps: steps needed before units dying is judged")),
)
def dead_relus(stats: RunStats, opts: dict[str, Any], r: Rule) -> list[Finding]:
    """ReLU units that output zero for every example, so they never get a gradient again.

    What it does:
        For every nn.ReLU / nn.ReLU6 module and every F.relu / torch.relu call it can see (in-place ones
        included), it reads the pre-activation (the ReLU's input) and finds, per unit (feature; channel for
        convolutions), its largest value over every example of every pass. A unit whose largest value is
        <= 0 is off. An off unit is dead when it stays off on varied inputs (the layer's coherence, the
        share of its firing units' pre-activation variance that is the same for every example, is below
        0.25, with at least 16 values per unit), when it is far below zero (its largest pre-activation is
        more than 3 of the layer's standard deviations below 0, as a large negative bias makes it), or when
        its pre-activation does not depend on the input at all; a ReLU with fewer than `collapse_depth`
        (3) weight layers up to it counts every off unit as dead (collapse needs depth). It fires when at
        least `fraction` (0.5) of a layer's units are dead, in layers of at least `min_units` (16) units
        (squeeze-excite bottlenecks of 4-8 units see only a few pooled examples; they count only when
        their off units are far below zero), and shows the bias of the weight layer feeding it. When a fully
        off layer, of any width, cuts the gradient to every weight layer before it (no learning signal at
        all), it is an error located at that layer; after the last Linear the fix is to remove the ReLU
        (logits must be able to go negative).

        Units that are off on every example but not dead are correlation collapse, not death: deep in a
        plain ReLU stack the representations of different examples become alike (nearly parallel), so on a
        small batch a healthy unit is off for all of them at once, typically less than one standard
        deviation below zero. When at least `fraction` of a layer's units are off that way it says so as info, with
        the margins and the coherence, and never calls them dead.

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
        examples/relu_collapse.py: a healthy 30-layer plain ReLU MLP (He init) with about half of its late
        units off on a batch of 8, about 0.5 std below zero, coherence about 0.7: info, correlation collapse.

    Fix:
        Use LeakyReLU (slope 0.01-0.02), PReLU or ELU, which keep a gradient for negative inputs;
        re-initialise biases to 0 and weights with He/Kaiming; add BatchNorm before the ReLU; lower the
        learning rate (large steps kill ReLUs). Correlation collapse (info) needs no fix; if the deep plain
        stack trains poorly, add residual connections or normalisation (BatchNorm/LayerNorm).

    References:
        SageMaker Debugger "dead ReLU" rule (unit active in < 1% of samples, layer flagged at > 50%);
        AUTOTRAINER (ICSE'21): >= 70% of gradients exactly zero; DeepDiagnosis (ICSE'22); correlation
        collapse in deep ReLU nets: Schoenholz et al., "Deep information propagation" (ICLR 2017), Balduzzi
        et al., "The shattered gradients problem" (ICML 2017).
    """
    out: list[Finding] = []
    dead = {l.name: _dead_units(stats, l, opts) for l in stats.layers if l.activation == S.RELU and l.units}
    bad = [l for l in stats.layers if l.name in dead and dead[l.name] is not None
           and dead[l.name] >= opts["fraction"] * l.units
           and (l.units >= opts["min_units"] or (l.off_margin_median or 0) <= -S.DEAD_MARGIN)]
    cut = signal_cut(stats)
    if cut is not None and cut["cause"] == "dead-relu":   # one cause, one finding: the cut, with the others
        return [_cut_finding(stats, cut, [l for l in bad if l is not cut["cut_layer"]], r)]
    collapsed = [l for l in stats.layers if l.activation == S.RELU and l not in bad
                 and (l.units or 0) >= opts["min_units"] and (l.off_fraction or 0) >= opts["fraction"]
                 and l.off_units != l.dead_units]
    if collapsed:   # off on every example but not dead: say why, never "dead"
        out.append(_collapse_finding(stats, collapsed, opts, r))
    if not bad:
        return out + died_findings(stats, opts, r)   # alive at step 0: did training kill them?
    worst = max(bad, key=lambda l: dead[l.name] / l.units)
    evidence: dict[str, Any] = {"threshold": opts["fraction"],
                                "dead_units": {l.name: {"dead": dead[l.name], "units": l.units} for l in bad}}
    biases = {}
    for l in bad:
        p = preceding_param_layer(stats, l)
        if p is not None and p.bias_mean is not None:
            biases[p.name] = p.bias_mean
    if biases:
        evidence["feeding_bias_mean"] = biases
    _margin_evidence(evidence, bad)
    msg = (f"{len(bad)} ReLU layer{'s have' if len(bad) > 1 else ' has'} mostly dead units (worst "
           f"{name(worst.name)}: {dead[worst.name]} of {worst.units} units, {pct(dead[worst.name] / worst.units)}, "
           f"output 0 for every example; threshold {pct(opts['fraction'])}).")
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
    out.insert(0, r.finding(bad[0].name, msg, evidence, fixes, covers=[l.name for l in bad]))
    return out + died_findings(stats, opts, r)


def _dead_units(stats: RunStats, layer: Any, opts: dict[str, Any]) -> int | None:
    """Dead units as the verdict counts them: those the measurement found dead (far below zero, off on varied
    inputs, or off whatever the input); in a layer with fewer than `collapse_depth` weight layers before it
    every off unit, since correlation collapse needs depth (a shallow layer whose examples look alike is
    dominated by something common to them all: a large bias or weights blown up by a large step)."""
    if layer.off_units is None or layer.dead_units is None or layer.off_units == layer.dead_units:
        return layer.dead_units
    if _shallower_than(stats, layer, opts["collapse_depth"]):
        return layer.off_units
    return layer.dead_units


def _shallower_than(stats: RunStats, layer: Any, depth: int) -> bool:
    """Whether fewer than `depth` weight layers come before `layer` (it stops counting at `depth`: asked for
    every ReLU layer, a full count made the rule quadratic in depth)."""
    if depth <= 0:
        return False
    n = 0
    for l in stats.layers:
        if l.index < layer.index and l.role == S.PARAM and any(t in l.type for t in WEIGHT_TYPES):
            n += 1
            if n >= depth:
                return False
    return True


def _margin_evidence(evidence: dict[str, Any], layers: list) -> None:
    """How far below zero the off units stay (median, in the layer's std) and how alike the examples'
    pre-activations are (coherence), for the layers that have them."""
    margins = {l.name: l.off_margin_median for l in layers if l.off_margin_median is not None}
    if margins:
        evidence["off_margin_median"] = margins
    coherence = {l.name: l.coherence for l in layers if l.coherence is not None}
    if coherence:
        evidence["coherence"] = coherence


def _collapse_finding(stats: RunStats, layers: list, opts: dict[str, Any], r: Rule) -> Finding:
    """Many units off on every example, but not dead: correlation collapse (or too few varied inputs)."""
    worst = max(layers, key=lambda l: l.off_fraction or 0)
    n = len(layers)
    evidence: dict[str, Any] = {"threshold": opts["fraction"],
                                "off_units": {l.name: {"off": l.off_units, "units": l.units} for l in layers},
                                "dead_units": {l.name: {"dead": l.dead_units, "units": l.units} for l in layers}}
    _margin_evidence(evidence, layers)
    where = (f"{n} ReLU layer{'s have' if n > 1 else ' has'} many units that output 0 for every example "
             f"(worst {name(worst.name)}: {worst.off_units} of {worst.units} units, {pct(worst.off_fraction or 0)})")
    coh = worst.coherence
    if worst.off_margin_median is not None:
        why = (f", but they are not dead: they stay close to zero (median margin {fmt(worst.off_margin_median)} "
               f"of the layer's std; {worst.dead_units} far below it)")
    else:
        why = ", but they are not dead"
    if coh is not None and coh >= S.VARIED_COHERENCE:
        why += (f", and the examples' pre-activations are much alike (coherence {coh:.2f}: {pct(coh)} of their "
                "variance is the same for every example). This is correlation collapse, not death: deep in a plain "
                "ReLU stack the representations of different examples become alike, so a healthy unit is off for a "
                "whole small batch at once; it fires on other inputs and keeps learning.")
    else:
        why += (f" and each unit saw only {worst.unit_samples} values, too few to tell a unit that is off on these "
                "inputs from a dead one." if worst.unit_samples is not None else ".")
    fixes = ["Nothing is dead: keep nn.ReLU. If the network trains poorly, add residual connections (x + f(x)) "
             "around blocks of layers: the identity path keeps the examples' representations apart with depth."]
    if not has_normalization(stats):
        fixes.append("Add normalisation (nn.BatchNorm1d/2d before each ReLU, or nn.LayerNorm): each unit is then "
                     "centred over the batch and fires on part of it.")
    fixes.append("Check with a larger, more varied batch (a real --batch, more --steps): units that fire there are "
                 "not dead.")
    return r.finding(worst.name, where + why, evidence, fixes, Severity.INFO, covers=[l.name for l in layers])


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
