from __future__ import annotations

import re
from typing import Any

from gradcheck_cli import stats as S
from gradcheck_cli import fixes as X
from gradcheck_cli.findings import Finding, Severity
from gradcheck_cli.rules._common import (
    describe_group, fmt, has_normalization, name, pct, preceding_param_layer, xavier_std,
)
from gradcheck_cli.rules.base import Option, Rule, rule
from gradcheck_cli.stats import RunStats


@rule(
    id="saturated-activations",
    code="GC104",
    severity=Severity.WARNING,
    options=(Option("fraction", 0.5, "warn when at least this share of a sigmoid/tanh layer's outputs is saturated",
                    maximum=1.0),),
)
def saturated_activations(stats: RunStats, opts: dict[str, Any], r: Rule) -> list[Finding]:
    """Sigmoid/tanh units stuck in their flat tails, where almost no gradient passes.

    What it does:
        For every nn.Sigmoid / nn.Tanh module and every torch.sigmoid / torch.tanh call it can see inside
        forward, it measures the share of outputs whose local derivative is below 1% of its maximum
        (sigmoid: s(1-s) < 0.0025, i.e. |pre-activation| > ~6; tanh: 1-t^2 < 0.01, i.e. |pre-activation| >
        ~3), over every example of every pass. It fires when that share is at least `fraction` (0.5) in
        some layer, and names the weight layer feeding it with its std against the Xavier std.

    Why it matters:
        sigmoid's derivative is at most 1/4 and tanh's at most 1, and both go to ~0 for large inputs. A
        saturated layer blocks the gradient almost completely: the layers before it stop learning, and
        the unit itself cannot move back out of saturation.

    Example:
        examples/saturated_tanh.py: a tanh MLP whose Linear layers are initialised with std 1.0 at width
        256 (Xavier would be 0.0625), so 95% of the tanh outputs are at +-1.

    Fix:
        Initialise the layers feeding sigmoid/tanh with Glorot/Xavier (torch.nn.init.xavier_normal_ with
        gain=nn.init.calculate_gain('tanh')); normalise the inputs; add BatchNorm/LayerNorm before the
        activation; or replace sigmoid/tanh in hidden layers with ReLU/LeakyReLU/ELU (keep sigmoid only
        where a probability or a gate is needed).

    References:
        Glorot & Bengio 2010; SageMaker Debugger "saturated activation" rule (layer flagged when > 50% of
        units saturate); DeepDiagnosis (ICSE'22): > 50% of pre-activations with |x| > 5.
    """
    bad = [l for l in stats.layers if l.activation in (S.SIGMOID, S.TANH) and l.saturated_fraction is not None
           and l.saturated_fraction >= opts["fraction"]]
    if not bad:
        return []
    worst = max(bad, key=lambda l: l.saturated_fraction)
    first = bad[0]
    evidence: dict[str, Any] = {"threshold": opts["fraction"],
                                "saturated_fraction": {l.name: l.saturated_fraction for l in bad}}
    feeders = []
    for l in bad:
        p = preceding_param_layer(stats, l)
        if p is not None and p.weight_rms is not None and p not in feeders:
            feeders.append(p)
    oversized = [(p, p.weight_rms / xavier_std(p)) for p in feeders if xavier_std(p)]
    oversized = [(p, f) for p, f in oversized if f > 1.5]
    if oversized:
        evidence["feeding_weight_std_over_xavier"] = {p.name: f for p, f in oversized}
    msg = (f"{len(bad)} sigmoid/tanh layer{'s are' if len(bad) > 1 else ' is'} saturated "
           f"(worst {name(worst.name)}: {pct(worst.saturated_fraction)} of outputs in the flat tails; "
           f"threshold {pct(opts['fraction'])}), so almost no gradient passes through.")
    fixes = []
    if oversized:
        p, f = oversized[0]
        act = "tanh" if first.activation == S.TANH else "sigmoid"
        fixes.append(X.fix(f"Re-initialise the {len(oversized)} layers feeding them with torch.nn.init.xavier_normal_"
                           f"(w, gain=nn.init.calculate_gain('{act}')): "
                           f"{name(p.name)} has weight std {fmt(p.weight_rms)}, {f:.1f}x the Xavier std.",
                           X.init([q.name for q, _ in oversized], "xavier-normal", nonlinearity=act,
                                  gain=5 / 3 if act == "tanh" else 1.0, zero_bias=False)))
    else:
        fixes.append(X.fix("Initialise the layers feeding them with torch.nn.init.xavier_normal_ (Glorot) so "
                           "pre-activations stay in the linear range.",
                           X.init([q.name for q in feeders], "xavier-normal", zero_bias=False)))
    gates = [l for l in bad if is_gate(l)]
    plain = [l for l in bad if l not in gates]
    if gates:
        evidence["gates"] = [l.name for l in gates]
        fixes.append(f"{describe_group(gates)} {'are gates' if len(gates) > 1 else 'is a gate'} (squeeze-excite, LSTM/GRU "
                     "or attention gate): keep the sigmoid, which is the gate's job, and bring its input back into "
                     "range instead: initialise the layer computing the gate's logits with a small std (or zeros) "
                     "and a bias of 0, or normalise its input.")
    if plain:
        modules = [l for l in plain if l.role == S.ACTIVATION]
        fixes.append(X.fix(f"Replace {describe_group(plain)} with nn.ReLU / nn.LeakyReLU(0.01) / nn.ELU in hidden "
                           "layers (keep sigmoid only for outputs and gates) and use kaiming_normal_ init.",
                           *((X.swap([l.name for l in plain], "relu"),
                              X.init(list(dict.fromkeys(q.name for q in (preceding_param_layer(stats, l) for l in plain)
                                                        if q is not None and q.weight_rms is not None)),
                                     "kaiming-normal", nonlinearity="relu"))
                             if len(modules) == len(plain) else ()),
                           reason="the sigmoid/tanh are calls in forward's code, not modules gradcheck can swap"))
    if not has_normalization(stats):
        fixes.append(X.fix("Add nn.BatchNorm1d/2d or nn.LayerNorm before each saturating activation.",
                           reason=X.ARCHITECTURE))
    if first.index <= 2:
        fixes.append(X.fix(f"Normalise the inputs (standardise, or scale pixels to [0, 1]): {name(first.name)} is "
                           "right after the input.", reason=X.DATA_CHANGE))
    return [r.finding(first.name, msg, evidence, fixes, covers=[l.name for l in bad])]


_GATE_PARTS = re.compile(r"(gate|gating|squeeze|excit|^se$|^se_|_se$|attn|attention|act_expand|sigmoid_gate)",
                         re.IGNORECASE)


def is_gate(layer: Any) -> bool:
    """A sigmoid that gates something (squeeze-excite, LSTM/GRU or attention gates), judged by the names of
    the layer and the modules around it."""
    if layer.activation != S.SIGMOID:
        return False
    parts = layer.name.replace("@", ".").split(".")
    return any(_GATE_PARTS.search(p) for p in parts) or "Gate" in layer.type or "SqueezeExcit" in layer.type


RULE = saturated_activations
