from __future__ import annotations

import math
from typing import Any

from gradcheck_cli import stats as S
from gradcheck_cli import fixes as X
from gradcheck_cli.findings import Finding, Severity
from gradcheck_cli.rules._common import (
    depth_ratio, fmt, has_normalization, he_std, name, weight_layers, x_factor, xavier_std,
)
from gradcheck_cli.rules.base import Option, Rule, rule
from gradcheck_cli.rules.trajectory import spike_findings
from gradcheck_cli.stats import RunStats


@rule(
    id="exploding-gradients",
    code="GC102",
    severity=Severity.WARNING,
    options=(
        Option("ratio", 1e3, "warn when early/late error-signal ratio is above this"),
        Option("error_ratio", 1e6, "report an error when the ratio is above this"),
        Option("min_layers", 3, "layers with parameters needed before depth is judged"),
        Option("max_grad_norm", 1e3, "warn when the global gradient norm is above this"),
        Option("time_ratio", 1e3, "recurrent layers: warn when earliest/latest per-step gradient is above this"),
        Option("min_time_steps", 10, "recurrent layers: sequence length needed before time is judged"),
        Option("spike", 10.0, "--train-steps: warn when a step's gradient norm is above this x the median of "
               "the steps before it"),
        Option("min_train_steps", 5, "--train-steps: steps needed before spikes are judged"),
        Option("step_growth", 1.05, "nn.RNN with W_hh's largest singular value above 1: warn when the gradient "
                                    "grows by more than this per time step"),
    ),
)
def exploding_gradients(stats: RunStats, opts: dict[str, Any], r: Rule) -> list[Finding]:
    """The error signal grows geometrically on its way back to the first layers (or first time steps).

    What it does:
        Compares |dLoss/dOutput| over the first quarter of the layers owning parameters with the last
        quarter (geometric medians, forward order) and fires when early/late is above `ratio` (1e3;
        an error above `error_ratio`, 1e6). For unidirectional recurrent layers it fires when the
        gradient reaching the input at the earliest 10% of time steps is more than `time_ratio` times that
        at the latest 10%, and, for an nn.RNN whose W_hh has a largest singular value above 1, when the
        gradient grows by more than `step_growth` (1.05) per step even if the sequence is too short for
        the total to pass 1e3. The global gradient norm over all parameters above `max_grad_norm` (1e3)
        is supporting evidence: its size depends on the loss's reduction, the batch and the weights' own
        scale (a stock MobileNetV2 with BatchNorm: 1.2e3), so alone it is info; it is a warning when the
        norm overflows float32, or when weight layers are above their He/Xavier std and the error signal
        grows towards the input. The evidence includes each weight layer's std against its He/Xavier std.

        With `--train-steps N` it also reads the global gradient norm of every training step: a step
        above `spike` (10) times the median of the steps before it is a spike; it reports the first
        one, the largest step-to-step jump, the layer that jumped most, and a concrete max_norm for
        clipping (2x the median norm of the healthy steps before the spike).

    Why it matters:
        Factors above 1 per layer (weights too large for their fan-in) multiply into huge gradients:
        the loss jumps around, weights blow up and eventually turn into NaN/Inf. Weight-gradient norms can
        hide it: in a deep ReLU net with too-large init, activations grow forward while the output gradient
        grows backward, so their product looks flat across depth while everything is astronomically large.

    Example:
        A 16-layer ReLU MLP initialised with std 0.2 at width 256 (He would be 0.088):
        examples/exploding_deep_relu.py, early/late ratio ~1e4. A ReLU nn.RNN with W_hh = 1.15 * I over
        100 steps: examples/rnn_exploding.py.

    Fix:
        Clip the gradient norm (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)); initialise with
        He/Kaiming (ReLU-family) or Glorot/Xavier (tanh/sigmoid) so each layer's gain is ~1; add
        BatchNorm/LayerNorm; use weight decay (L2) to keep weights small; lower the learning rate; for RNNs
        keep W_hh's largest singular value at or below 1 (orthogonal init) and clip.

    References:
        Pascanu, Mikolov & Bengio 2013; He et al. 2015; Glorot & Bengio 2010;
        AUTOTRAINER (ICSE'21): exploding when first/last gradient ratio > 70.
    """
    findings: list[Finding] = []
    d = depth_ratio(stats, opts["min_layers"])
    if d is not None and d["ratio"] > opts["ratio"]:
        ratio, per_layer, profile = d["ratio"], d["per_layer"], d["profile"]
        sev = Severity.ERROR if ratio > opts["error_ratio"] else r.severity
        evidence = {"early_late_ratio": ratio, "threshold": opts["ratio"], "error_threshold": opts["error_ratio"],
                    **d["evidence"], "per_layer_factor": per_layer, "total_grad_norm": stats.total_grad_norm}
        e, l = evidence["early_output_grad_norm"], evidence["late_output_grad_norm"]
        msg = (f"The error signal |dL/dy| grows by a factor {fmt(ratio)} from the last layers back to the first "
               f"({fmt(l)} -> {fmt(e)}; {x_factor(per_layer)} per layer over {len(profile)} layers).")
        findings.append(r.finding(profile[0].name, msg, evidence, _fixes(stats, evidence), sev))
    exact_nonfinite = bool(stats.first_nonfinite_backward or stats.first_nonfinite_forward
                           or any(l.nonfinite_param_grads for l in stats.layers)
                           or any(not math.isfinite(v) for v in stats.losses))
    g = stats.total_grad_norm
    # An infinite norm with no NaN/Inf found by the exact check is a float32 overflow (norm > ~1.8e19).
    if g is not None and not math.isnan(g) and g > opts["max_grad_norm"] and (math.isfinite(g) or not exact_nonfinite):
        # The largest layer: an overflowing (infinite) norm is the largest, not skipped.
        top = max((x for x in stats.layers if x.grad_norm is not None and not math.isnan(x.grad_norm)),
                  key=lambda x: x.grad_norm, default=None)
        evidence = {"total_grad_norm": stats.total_grad_norm, "max_over_steps": stats.total_grad_norm_max,
                    "threshold": opts["max_grad_norm"],
                    "largest_layer": top.name if top else None, "largest_layer_grad_norm": top.grad_norm if top else None}
        size = ("overflows float32 (above ~1.8e19) although no value is NaN/Inf" if math.isinf(g)
                else f"is {fmt(g)}")
        fixes = _fixes(stats, evidence)
        # The absolute norm depends on the loss's reduction, the batch and the weights' own scale (with
        # BatchNorm after a layer, |grad| grows as |weight| shrinks): alone it is evidence, not a failure.
        # It fails the model when it overflows, or with a cause in hand: weights larger than their init
        # std and an error signal that grows towards the input.
        grows = d is None or d["ratio"] >= 1.0
        supported = math.isinf(g) or (bool(evidence.get("oversized_weights")) and grows)
        evidence["supported_by"] = ("overflow" if math.isinf(g) else "oversized weights" if supported else None)
        msg = (f"The global gradient norm {size} (threshold {fmt(opts['max_grad_norm'])})"
               + (f", largest at {name(top.name)} ({fmt(top.grad_norm)})" if top else ""))
        if supported or (d is not None and d["ratio"] > opts["ratio"]):
            msg += "."
            sev = None
        else:
            msg += (": by itself this is not explosion (its size depends on the loss's reduction, the batch and the "
                    "weights' scale; the depth profile is "
                    + (f"flat: early/late {fmt(d['ratio'])}" if d is not None else "not measured")
                    + "), so it is reported as context.")
            sev = Severity.INFO
            fixes = ["Nothing to fix on this evidence alone; if training is unstable, clip the gradient norm "
                     "(torch.nn.utils.clip_grad_norm_) and check the learning rate."]
        if not (findings and sev is None):   # one cause reported once: the depth finding already says it
            findings.append(r.finding(top.name if top else None, msg, evidence, fixes, sev))
        else:
            findings[0].evidence.update({"total_grad_norm": g, "largest_layer": evidence["largest_layer"]})
    for layer in stats.layers:
        if (not layer.recurrent or layer.bidirectional or not layer.time_steps
                or layer.time_steps < opts["min_time_steps"] or layer.time_grad_first_last is None):
            continue
        m = layer.time_grad_first_last
        per_step = m ** (1.0 / max(layer.time_steps - 1, 1)) if m > 0 and math.isfinite(m) else m
        # A vanilla RNN whose W_hh can amplify (largest singular value > 1) and whose measured gradient grows
        # at every step explodes through time on longer sequences, even if this one is too short for 1e3.
        steady = (layer.recurrent == "RNN" and (layer.recurrent_sigma_max or 0) > 1.0
                  and per_step > opts["step_growth"])
        if m > opts["time_ratio"] or steady:
            evidence = {"time_grad_ratio": m, "threshold": opts["time_ratio"], "time_steps": layer.time_steps,
                        "cell": layer.recurrent, "per_step_factor": m ** (1.0 / max(layer.time_steps - 1, 1)),
                        "profile": layer.time_grad_profile, "weight_hh_sigma_max": layer.recurrent_sigma_max}
            sig = (f"; weight_hh_l0's largest singular value is {fmt(layer.recurrent_sigma_max)}"
                   if layer.recurrent_sigma_max is not None else "")
            msg = (f"The gradient reaching {name(layer.name)}'s input grows by a factor {fmt(m)} from the latest to the "
                   f"earliest time steps over {layer.time_steps} steps ({x_factor(per_step)} per step){sig}.")
            if m <= opts["time_ratio"]:
                evidence["step_growth_threshold"] = opts["step_growth"]
                msg += (f" It grows at every step, so over 100 steps it would reach {fmt(per_step ** 99)}: "
                        "exploding through time.")
            fixes = [
                X.fix(f"Initialise {name(layer.name)}.weight_hh_l0 with torch.nn.init.orthogonal_ (largest singular "
                      "value 1) or scale it below 1.",
                      X.orthogonal([f"{layer.name}.weight_hh_l0"], 1.0) if layer.recurrent == "RNN" else None,
                      reason="a gated cell's weight_hh stacks one matrix per gate: scale it in code"),
                X.fix("Clip the gradient norm before each optimizer step: "
                      "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0).", X.clip(1.0),
                      reason=X.NEEDS_TRAINING),
            ]
            if layer.recurrent == "RNN":
                fixes.append(X.fix(f"Replace nn.RNN {name(layer.name)} with nn.LSTM or nn.GRU.", reason=X.ARCHITECTURE))
            findings.append(r.finding(layer.name, msg, evidence, fixes))
    return findings + spike_findings(stats, opts, r)


def _fixes(stats: RunStats, evidence: dict[str, Any]) -> list[str]:
    # At step 0 the cause is the weights' scale: re-initialising them is the fix that removes it (verified
    # on the calibration models, docs/calibration.md), so it comes first; clipping only bounds the steps.
    clip = X.fix("Clip the gradient norm before each optimizer step: "
                 "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0).", X.clip(1.0),
                 reason=X.NEEDS_TRAINING)
    fixes = []
    big = []
    for w in weight_layers(stats):
        relu_like = any(x.activation == S.RELU for x in stats.layers)
        ref = he_std(w) if relu_like else xavier_std(w)
        if w.weight_rms and ref and w.weight_rms > 1.25 * ref:
            big.append((w, w.weight_rms / ref, "He" if relu_like else "Xavier"))
    if big:
        w, factor, init = big[0]
        evidence["oversized_weights"] = {b[0].name: b[1] for b in big}
        fn = "kaiming_normal_(w, nonlinearity='relu')" if init == "He" else "xavier_normal_(w)"
        fixes.append(X.fix(f"Re-initialise the {len(big)} weight layers whose std exceeds {init} init "
                           f"(e.g. {name(w.name)}: std {fmt(w.weight_rms)} = {factor:.1f}x the {init} std) with "
                           f"torch.nn.init.{fn}.",
                           X.init([b[0].name for b in big], "kaiming-normal" if init == "He" else "xavier-normal",
                                  nonlinearity="relu" if init == "He" else None, zero_bias=False)))
        fixes.append(clip)
    else:
        fixes.append(clip)
        fixes.append(X.fix("Initialise weights with torch.nn.init.kaiming_normal_ (ReLU-family) or xavier_normal_ "
                           "(tanh/sigmoid) so each layer's gain is about 1.", reason="no layer's weights exceed their "
                           "init std: there is no re-initialisation to derive from the statistics"))
    if not has_normalization(stats):
        fixes.append(X.fix("Add nn.BatchNorm1d/2d or nn.LayerNorm after the weight layers to keep activations "
                           "and gradients at unit scale.", reason=X.ARCHITECTURE))
    fixes.append(X.fix("Add weight decay (L2) to the optimizer and lower the learning rate.",
                       reason=X.OPTIMIZER_CHANGE))
    return fixes


RULE = exploding_gradients
