from __future__ import annotations

from typing import Any

from gradcheck_cli import stats as S
from gradcheck_cli.findings import Finding, Severity
from gradcheck_cli.rules._common import (
    activation_layers, depth_ratio, describe_group, fmt, has_normalization, name, weight_layers,
)
from gradcheck_cli.rules.base import Option, Rule, rule
from gradcheck_cli.stats import RunStats


@rule(
    id="vanishing-gradients",
    code="GC101",
    severity=Severity.WARNING,
    options=(
        Option("ratio", 1e-3, "warn when early/late error-signal ratio is below this"),
        Option("error_ratio", 1e-6, "report an error when the ratio is below this"),
        Option("min_layers", 3, "layers with parameters needed before depth is judged"),
        Option("time_ratio", 1e-3, "recurrent layers: warn when earliest/latest per-step gradient is below this"),
        Option("min_time_steps", 10, "recurrent layers: sequence length needed before time is judged"),
    ),
)
def vanishing_gradients(stats: RunStats, opts: dict[str, Any], r: Rule) -> list[Finding]:
    """The error signal shrinks geometrically on its way back to the first layers (or first time steps).

    What it does:
        Takes |dLoss/dOutput| of every layer that owns parameters, in forward order, and compares the
        geometric median over the first quarter of the layers with the one over the last quarter. The
        rule fires when early/late is below `ratio` (1e-3), and reports an error below `error_ratio`
        (1e-6). For nn.RNN/LSTM/GRU it also compares the gradient reaching the layer's input at the
        earliest 10% of time steps with the latest 10% (the smallest with the largest step for
        bidirectional layers) and fires below `time_ratio`. The output gradient is used rather than the
        weight gradient because weight-gradient norms multiply it by the activations, which can shrink
        forward as fast as the error signal shrinks backward, and then look flat.

    Why it matters:
        Backpropagation multiplies one factor per later layer (weight matrix times activation derivative);
        factors below 1 shrink the gradient geometrically, so layers near the input barely learn and the
        network trains like a shallow one. Nielsen (ch. 5) measured a sigmoid net whose first hidden layer
        learns ~100x slower than its fourth. Through time, an RNN multiplies T-k Jacobians; if W_hh's largest
        singular value is below 1 (tanh) the gradient to early steps vanishes (0.8^50 ~ 1.4e-5).

    Example:
        A 10-layer MLP with nn.Sigmoid after every nn.Linear (examples/vanishing_sigmoid_mlp.py): the
        output gradient at `layers.0` is ~1e-7 of that at the last layer. A vanilla nn.RNN reading only
        its last hidden state over 100 steps (examples/rnn_vanishing.py).

    Fix:
        Replace sigmoid/tanh in deep stacks with ReLU, LeakyReLU or ELU; initialise with He/Kaiming
        (torch.nn.init.kaiming_normal_) for ReLU-family and Glorot/Xavier for tanh/sigmoid; add
        BatchNorm/LayerNorm; add residual connections; for sequences use LSTM/GRU instead of nn.RNN,
        initialise the LSTM forget-gate bias to 1, and pool over all time steps instead of reading
        only the last one.

    References:
        Nielsen, Neural Networks and Deep Learning, ch. 5; Glorot & Bengio 2010; He et al. 2015;
        Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural networks";
        AUTOTRAINER (ICSE'21) first/last gradient ratio < 1e-3.
    """
    findings: list[Finding] = []
    d = depth_ratio(stats, opts["min_layers"])
    if d is not None and d["ratio"] < opts["ratio"]:
        ratio, per_layer, profile = d["ratio"], d["per_layer"], d["profile"]
        sev = Severity.ERROR if ratio < opts["error_ratio"] else r.severity
        first = profile[0]
        evidence = {"early_late_ratio": ratio, "threshold": opts["ratio"], "error_threshold": opts["error_ratio"],
                    **d["evidence"], "per_layer_factor": per_layer}
        if first.grad_norm is not None and first.weight_norm:
            evidence["first_layer_grad_to_weight"] = first.grad_norm / first.weight_norm
        e, l = evidence["early_output_grad_norm"], evidence["late_output_grad_norm"]
        msg = (f"The error signal |dL/dy| at the first layers is {fmt(ratio)} of that at the last layers "
               f"({fmt(e)} vs {fmt(l)}; x{fmt(per_layer)} per layer over {len(profile)} layers), "
               f"so {name(first.name)} barely learns.")
        findings.append(r.finding(first.name, msg, evidence, _depth_fixes(stats, profile, per_layer), sev))
    findings.extend(_through_time(stats, opts, r))
    return findings


def _depth_fixes(stats: RunStats, profile: list, per_layer: float) -> list[str]:
    fixes = []
    sat = activation_layers(stats, S.SIGMOID, S.TANH)
    relu = activation_layers(stats, S.RELU)
    weights = weight_layers(stats)
    if sat:
        fixes.append(f"Replace {describe_group(sat)} with nn.ReLU (or nn.LeakyReLU(0.01)) and initialise the "
                     f"{len(weights)} weight layers with torch.nn.init.kaiming_normal_(w, nonlinearity='relu'): "
                     "sigmoid's derivative is at most 0.25, so a sigmoid chain shrinks the gradient at every layer.")
    elif relu or weights:
        low = [w for w in weights if w.weight_rms and w.fan_in and w.weight_rms < 0.8 * (2.0 / w.fan_in) ** 0.5]
        detail = ""
        if low:
            w = low[0]
            detail = (f" (e.g. {name(w.name)} has weight std {fmt(w.weight_rms)}, He init would give "
                      f"{fmt((2.0 / w.fan_in) ** 0.5)})")
        fixes.append(f"Initialise the {len(weights)} weight layers with torch.nn.init.kaiming_normal_(w, "
                     f"nonlinearity='relu') (He init, std = sqrt(2/fan_in)){detail}: PyTorch's default "
                     f"init shrinks the signal in deep plain stacks; measured x{fmt(per_layer)} per layer.")
    if not has_normalization(stats):
        fixes.append(f"Add normalisation (nn.BatchNorm1d/2d after each Linear/Conv, or nn.LayerNorm) to the "
                     f"{len(weights)} weight layers so each layer's inputs keep unit scale.")
    if len(profile) >= 6:
        fixes.append(f"Add residual (skip) connections around blocks so the gradient has an identity path "
                     f"back to {name(profile[0].name)}.")
    return fixes


def _through_time(stats: RunStats, opts: dict[str, Any], r: Rule) -> list[Finding]:
    out = []
    for layer in stats.layers:
        if not layer.recurrent or not layer.time_steps or layer.time_steps < opts["min_time_steps"]:
            continue
        metric = layer.time_grad_min_max if layer.bidirectional else layer.time_grad_first_last
        if metric is None or metric >= opts["time_ratio"]:
            continue
        gated = layer.recurrent in ("LSTM", "GRU")
        what = "smallest" if layer.bidirectional else "earliest"
        msg = (f"The gradient reaching {name(layer.name)}'s input at the {what} time steps is {fmt(metric)} of "
               f"that at the {'largest' if layer.bidirectional else 'latest'} steps over {layer.time_steps} "
               f"steps: the start of each sequence gets almost no learning signal.")
        evidence = {"time_grad_ratio": metric, "threshold": opts["time_ratio"], "time_steps": layer.time_steps,
                    "cell": layer.recurrent, "bidirectional": layer.bidirectional,
                    "per_step_factor": metric ** (1.0 / max(layer.time_steps - 1, 1)),
                    "profile": layer.time_grad_profile}
        fixes = []
        if not gated:
            if layer.recurrent_sigma_max is not None:
                evidence["weight_hh_sigma_max"] = layer.recurrent_sigma_max
            sig = (f" (its largest singular value is {fmt(layer.recurrent_sigma_max)}; below 1 the gradient "
                   "through time vanishes)") if layer.recurrent_sigma_max is not None else ""
            fixes.append(f"Replace nn.RNN {name(layer.name)} with nn.LSTM or nn.GRU: the gates keep a path for "
                         "the gradient through time.")
            fixes.append(f"Initialise {name(layer.name)}.weight_hh_l0 with torch.nn.init.orthogonal_{sig}.")
        else:
            fixes.append(f"Initialise {name(layer.name)}'s forget-gate bias to 1 (bias_hh_l0[H:2H] = 1 for "
                         "nn.LSTM) so the cell state carries gradient across more steps.")
        fixes.append("Pool over all time steps (mean/max of the outputs) or use a bidirectional layer instead "
                     "of reading only the last hidden state; or shorten sequences (truncated BPTT).")
        # Gated cells at init decay too, but their gates can learn to keep information: report, don't fail.
        sev = Severity.INFO if gated else r.severity
        out.append(r.finding(layer.name, msg, evidence, fixes, sev))
    return out


RULE = vanishing_gradients
