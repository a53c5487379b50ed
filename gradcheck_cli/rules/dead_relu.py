from __future__ import annotations

from typing import Any

from gradcheck_cli import stats as S
from gradcheck_cli.findings import Finding, Severity
from gradcheck_cli.rules._common import describe_group, fmt, has_normalization, name, pct, preceding_param_layer
from gradcheck_cli.rules.base import Option, Rule, rule
from gradcheck_cli.rules.trajectory import died_findings
from gradcheck_cli.stats import RunStats


@rule(
    id="dead-relus",
    code="GC105",
    severity=Severity.WARNING,
    options=(Option("fraction", 0.5, "warn when at least this share of a ReLU layer's units is dead", maximum=1.0),
             Option("min_units", 4, "ignore ReLU layers with fewer units than this"),
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
        pass. It fires when at least `fraction` (0.5) of a layer's units are dead, and shows the bias of
        the weight layer feeding it.

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
        learning-rate step that pushed them negative), and 100% of the ReLU units are dead.

    Fix:
        Use LeakyReLU (slope 0.01-0.02), PReLU or ELU, which keep a gradient for negative inputs;
        re-initialise biases to 0 and weights with He/Kaiming; add BatchNorm before the ReLU; lower the
        learning rate (large steps kill ReLUs).

    References:
        SageMaker Debugger "dead ReLU" rule (unit active in < 1% of samples, layer flagged at > 50%);
        AUTOTRAINER (ICSE'21): >= 70% of gradients exactly zero; DeepDiagnosis (ICSE'22).
    """
    bad = [l for l in stats.layers if l.activation == S.RELU and l.dead_fraction is not None
           and (l.units or 0) >= opts["min_units"] and l.dead_fraction >= opts["fraction"]]
    if not bad:
        return died_findings(stats, opts, r)   # alive at step 0: did training kill them?
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
    fixes = [f"Replace {describe_group(bad)} with nn.LeakyReLU(0.01) (or nn.PReLU / nn.ELU) so negative "
             "inputs still pass a gradient."]
    negative = {k: v for k, v in biases.items() if v < -0.1}
    if negative:
        k, v = next(iter(negative.items()))
        fixes.append(f"Reset the negative biases feeding them (e.g. `{k}.bias` has mean {fmt(v)}) with "
                     "torch.nn.init.zeros_, and initialise weights with kaiming_normal_(nonlinearity='relu').")
    else:
        fixes.append("Initialise the weights feeding them with torch.nn.init.kaiming_normal_(w, "
                     "nonlinearity='relu') and biases with zeros_.")
    if not has_normalization(stats):
        fixes.append("Add nn.BatchNorm1d/2d before each ReLU so each unit sees inputs on both sides of 0.")
    fixes.append("Lower the learning rate: one large step can push a unit's bias negative for good.")
    return [r.finding(bad[0].name, msg, evidence, fixes, covers=[l.name for l in bad])] + died_findings(stats, opts, r)


RULE = dead_relus
