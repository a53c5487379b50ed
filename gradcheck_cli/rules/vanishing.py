from __future__ import annotations

import math
from typing import Any

from gradcheck_cli import stats as S
from gradcheck_cli import fixes as X
from gradcheck_cli.findings import Finding, Severity
from gradcheck_cli.rules._common import (
    NORM_TYPES, activation_layers, depth_ratio, describe_group, fmt, geo_median, has_normalization, name, signal_cut,
    weight_layers, x_factor, xavier_std,
)
from gradcheck_cli.rules.base import Option, Rule, rule
from gradcheck_cli.rules.saturation import is_gate
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
        Option("steady_ratio", 0.3, "sigmoid/tanh stacks: warn when the signal decays at every layer and "
                                    "early/late is below this"),
        Option("relative_speed", 1e-5, "a weight layer whose |grad|/|weight| is below this fraction of the "
                                       "model's median is negligible (a warning when its weights are tiny)"),
        Option("tiny_weights", 0.01, "weights whose std is below this fraction of the Xavier std are tiny"),
    ),
)
def vanishing_gradients(stats: RunStats, opts: dict[str, Any], r: Rule) -> list[Finding]:
    """The error signal shrinks geometrically on its way back to the first layers (or first time steps), or never arrives.

    What it does:
        Takes |dLoss/dOutput| of every layer that owns parameters, in forward order, and compares the
        geometric median over the first quarter of the layers with the one over the last quarter. The
        rule fires when early/late is below `ratio` (1e-3), and reports an error below `error_ratio`
        (1e-6). For nn.RNN/LSTM/GRU it also compares the gradient reaching the layer's input at the
        earliest 10% of time steps with the latest 10% (the smallest with the largest step for
        bidirectional layers) and fires below `time_ratio`. The output gradient is used rather than the
        weight gradient because weight-gradient norms multiply it by the activations, which can shrink
        forward as fast as the error signal shrinks backward, and then look flat.

        Three more signs of the same problem. No learning signal at all: when every weight layer before some
        point gets an exactly-zero gradient in every step while a later one learns, it reports an error
        and locates the point, walking back from the loss to the first layer whose output gets a non-zero
        gradient while the layer before it gets zero, and names the cause: a softmax over a dimension of
        size 1 (always 1, gradient always 0), an argmax/round/comparison/detach/integer cast or a
        multiplication by an all-zero tensor in forward, or inputs that vanished on the way forward (the
        error signal arrives but the weight gradient, dL/dy times the input, underflows). A fully dead
        ReLU layer as the cause is reported by dead-relus instead, and a zero-initialised layer after them
        (a zero-init head) as info: that holds at step 0 only. Steady decay: in a sigmoid/tanh stack
        without normalisation, a signal that shrinks at every layer to below `steady_ratio` (0.3) at the
        first layers is Nielsen's vanishing gradient problem, a warning. Negligible weight gradients:
        weight layers whose |grad|/|weight| is below `relative_speed` (1e-5) of the model's median, with
        weights below `tiny_weights` (1%) of the Xavier std, are vanishing even when a residual stream
        keeps |dL/dy| flat (with weights at a normal scale it is info).

    Why it matters:
        Backpropagation multiplies one factor per later layer (weight matrix times activation derivative);
        factors below 1 shrink the gradient geometrically, so layers near the input barely learn and the
        network trains like a shallow one. Nielsen (ch. 5) measured a sigmoid net whose first hidden layer
        learns ~100x slower than its fourth. Through time, an RNN multiplies T-k Jacobians; if W_hh's largest
        singular value is below 1 (tanh) the gradient to early steps vanishes (0.8^50 ~ 1.4e-5).

    Example:
        A 10-layer MLP with nn.Sigmoid after every nn.Linear (examples/vanishing_sigmoid_mlp.py): the
        output gradient at `layers.0` is ~1e-7 of that at the last layer. A vanilla nn.RNN reading only
        its last hidden state over 100 steps (examples/rnn_vanishing.py). A binary classifier with one
        output and nn.Softmax(dim=1) after it (examples/softmax_single_output.py): no learning signal, an
        error. A Llama built with initializer_range=1e-5 (benchmarks/hf_models.py:llama_init_1e_5):
        q_proj's |grad|/|weight| is ~5e-7 of the model's median.

    Fix:
        Replace sigmoid/tanh in deep stacks with ReLU, LeakyReLU or ELU; initialise with He/Kaiming
        (torch.nn.init.kaiming_normal_) for ReLU-family and Glorot/Xavier for tanh/sigmoid; add
        BatchNorm/LayerNorm; add residual connections; for sequences use LSTM/GRU instead of nn.RNN,
        initialise the LSTM forget-gate bias to 1, and pool over all time steps instead of reading
        only the last one. For no learning signal: remove the operation that has no gradient (use
        sigmoid + BCE, or 2 outputs, instead of softmax over one; keep argmax/round out of the training
        path), fix the zero mask, or restore the activations' scale (BatchNorm gammas at 1, He init).

    References:
        Nielsen, Neural Networks and Deep Learning, ch. 5; Glorot & Bengio 2010; He et al. 2015;
        Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural networks";
        AUTOTRAINER (ICSE'21) first/last gradient ratio < 1e-3.
    """
    findings: list[Finding] = []
    cut = signal_cut(stats)
    if cut is not None and cut["cause"] != "dead-relu":   # a fully dead ReLU layer: reported by dead-relus
        findings.append(_no_signal(stats, cut, r))
        findings.extend(_through_time(stats, opts, r))
        return findings
    d = depth_ratio(stats, opts["min_layers"])
    steady = _steady_saturating_decay(stats, d, opts)
    if d is not None and (d["ratio"] < opts["ratio"] or steady):
        ratio, per_layer, profile = d["ratio"], d["per_layer"], d["profile"]
        sev = Severity.ERROR if ratio < opts["error_ratio"] else r.severity
        first = profile[0]
        evidence = {"early_late_ratio": ratio, "threshold": opts["ratio"], "error_threshold": opts["error_ratio"],
                    **d["evidence"], "per_layer_factor": per_layer}
        if first.grad_norm is not None and first.weight_norm:
            evidence["first_layer_grad_to_weight"] = first.grad_norm / first.weight_norm
        e, l = evidence["early_output_grad_norm"], evidence["late_output_grad_norm"]
        on_stream = ratio < opts["ratio"] and not steady and d["best_ratio"] >= opts["ratio"]
        if on_stream:
            # Most early layers sit in residual branches scaled down by design (LayerScale, small-init
            # branches) while a layer on the stream gets a normal signal: not the vanishing problem.
            sev = Severity.INFO
            evidence["best_early_ratio"] = d["best_ratio"]
        if on_stream:
            msg = (f"The error signal |dL/dy| of most early layers is {fmt(ratio)} of that at the last layers, but "
                   f"the best-served early layer gets {fmt(d['best_ratio'])} of it: the decay is inside residual "
                   "branches scaled down at init (e.g. LayerScale), which is their design, so this is context.")
        elif steady and ratio >= opts["ratio"]:
            evidence["steady_threshold"] = opts["steady_ratio"]
            msg = (f"The error signal |dL/dy| shrinks at every layer of this sigmoid/tanh stack, to {fmt(ratio)} "
                   f"at the first layers ({fmt(e)} vs {fmt(l)}; {x_factor(per_layer)} per layer over "
                   f"{len(profile)} layers): {name(first.name)} learns {fmt(1 / ratio)} times slower than the last "
                   "layers (Nielsen's vanishing gradient problem).")
        else:
            msg = (f"The error signal |dL/dy| at the first layers is {fmt(ratio)} of that at the last layers "
                   f"({fmt(e)} vs {fmt(l)}; {x_factor(per_layer)} per layer over {len(profile)} layers), "
                   f"so {name(first.name)} barely learns.")
        fixes = (["Nothing to fix if the branch scales are deliberate (LayerScale, ReZero-style init); they grow "
                  "in the first updates."] if on_stream else _depth_fixes(stats, profile, per_layer))
        findings.append(r.finding(first.name, msg, evidence, fixes, sev))
    if not any(f.severity.rank >= Severity.WARNING.rank for f in findings):
        slow = _negligible_weight_grads(stats, opts)
        if slow is not None:
            f = _slow_finding(stats, slow, opts, r)
            if f.severity.rank >= Severity.WARNING.rank:   # one cause, reported once: it explains the decay
                findings = [x for x in findings if x.severity.rank >= Severity.WARNING.rank]
            findings.append(f)
    findings.extend(_through_time(stats, opts, r))
    return findings


def _steady_saturating_decay(stats: RunStats, d: dict | None, opts: dict[str, Any]) -> bool:
    """Moderate but steady decay through a sigmoid/tanh stack (Nielsen ch. 5: each sigmoid layer passes at
    most 1/4 of the signal): every layer's |dL/dy| below the next one's, early/late below `steady_ratio`,
    and most hidden activations sigmoid/tanh. ReLU-family and normalised stacks are not judged this way."""
    if d is None or d["ratio"] >= opts["steady_ratio"]:
        return False
    acts = [l for l in stats.layers if l.activation is not None]
    saturating = [l for l in acts if l.activation in (S.SIGMOID, S.TANH)]
    if not acts or len(saturating) * 2 < len(acts) or has_normalization(stats):
        return False
    g = [l.output_grad_norm for l in d["profile"]]
    return all(a < b * 1.05 for a, b in zip(g, g[1:]))


def _negligible_weight_grads(stats: RunStats, opts: dict[str, Any]) -> dict | None:
    """Weight layers whose gradient is negligible against their own weights, relative to the rest of the
    model (|g|/|w| below `relative_speed` times the median): they do not learn even when a residual stream
    keeps |dL/dy| flat (a Llama built with initializer_range=1e-5: q_proj gradient ~1e-20)."""
    speeds = [(l, l.grad_norm / l.weight_norm) for l in weight_layers(stats)
              if l.grad_norm and l.weight_norm and math.isfinite(l.grad_norm) and math.isfinite(l.weight_norm)]
    if len(speeds) < opts["min_layers"]:
        return None
    median = geo_median(v for _, v in speeds)
    slow = [(l, v) for l, v in speeds if v < opts["relative_speed"] * median]
    if not slow:
        return None
    return {"slow": slow, "median": median, "measured": len(speeds)}


def _slow_finding(stats: RunStats, slow: dict, opts: dict[str, Any], r: Rule) -> Finding:
    layers = slow["slow"]
    worst, v = min(layers, key=lambda x: x[1])
    tiny = [l for l, _ in layers if l.weight_rms is not None and l.fan_in and xavier_std(l)
            and l.weight_rms < opts["tiny_weights"] * xavier_std(l)]
    msg = (f"{len(layers)} of {slow['measured']} weight layers get a negligible gradient relative to their weights "
           f"(worst {name(worst.name)}: |grad|/|weight| = {fmt(v)}, {fmt(v / slow['median'])} of the model's median "
           f"{fmt(slow['median'])}): they will not learn, even though the error signal reaches them.")
    evidence = {"relative_speed": {l.name: s for l, s in layers}, "median_relative_speed": slow["median"],
                "threshold": opts["relative_speed"], "layers_measured": slow["measured"],
                "grad_norm": {l.name: l.grad_norm for l, _ in layers},
                "weight_rms": {l.name: l.weight_rms for l, _ in layers}}
    fixes = []
    if tiny:
        t = tiny[0]
        fixes.append(X.fix(f"Initialise the weights at a normal scale: {name(t.name)} has weight std "
                           f"{fmt(t.weight_rms)} against {fmt(xavier_std(t))} for Xavier (for a Hugging Face model, "
                           "initializer_range in the config, typically 0.02): products of tiny weights (e.g. "
                           "attention scores q·k) have gradients that are tinier still.",
                           X.init([l.name for l in tiny], "xavier-normal", zero_bias=False)))
    fixes.append(X.fix("Initialise with torch.nn.init.xavier_normal_ / kaiming_normal_ (or the library's default "
                       "init) so every layer's gradient is comparable to its weights.",
                       X.init([l.name for l, _ in layers], "xavier-normal", zero_bias=False)))
    gamma_fix = _tiny_gamma_fix(stats)
    if gamma_fix:   # the activations feeding them shrink through normalisation scales near 0: a cause in hand
        evidence["tiny_norm_weights"] = {l.name: l.norm_weight_rms for l in stats.layers
                                         if l.norm_weight_rms is not None and l.norm_weight_rms < 0.1}
        return r.finding(worst.name, msg, evidence, gamma_fix + fixes)
    if not tiny:
        # Weights at a normal scale with a negligible gradient (e.g. attention keys whose scores do not yet
        # depend on them): worth knowing, but calibration found it on stock architectures: not a failure.
        msg += " Their weights are at a normal scale, so this is reported as context."
        return r.finding(worst.name, msg, evidence, fixes[1:], Severity.INFO)
    evidence["tiny_weights"] = [l.name for l in tiny]
    return r.finding(worst.name, msg, evidence, fixes)


def _no_signal(stats: RunStats, cut: dict, r: Rule) -> Finding:
    """Every trainable layer upstream of a point gets an exactly-zero gradient: no learning signal."""
    up, down, at, cause = cut["upstream"], cut["downstream"], cut["cut_layer"], cut["cause"]
    n_up = sum(l.trainable_params for l in up)
    total = sum(l.trainable_params for l in up + down) or 1
    where = (f"at {name(at.name)} ({at.type})" if at is not None else "in the loss")
    if cause == "other" and at is not None:
        where = f"between {name(up[-1].name)} and {name(at.name)}"
    last_zero = up[-1]
    msg = (f"No learning signal: the {len(up)} weight layer{'s' if len(up) != 1 else ''} up to {name(last_zero.name)} "
           f"({fmt(n_up / total * 100)}% of the trainable parameters) get an exactly-zero gradient in every step; "
           f"the gradient dies {where}.")
    evidence = {"upstream_layers": [l.name for l in up], "upstream_parameters": n_up,
                "learning_layers": [l.name for l in down], "cut_at": at.name if at is not None else None,
                "cut_type": at.type if at is not None else None, "cause": cause}
    fixes = []
    if cause == "softmax":
        fixes.append(X.fix(f"{name(at.name)} is a softmax over a dimension of size 1: its output is always 1 and its "
                           "gradient always 0. For one output per example use torch.sigmoid with nn.BCEWithLogitsLoss "
                           "(or nn.BCELoss), or give the last layer 2 outputs and use nn.CrossEntropyLoss.",
                           *([X.swap([at.name], "sigmoid")] if at.role == S.ACTIVATION else []),
                           reason="the softmax is a call in forward's code (F.softmax / torch.softmax), not an "
                                  "nn.Softmax module gradcheck can swap"))
    elif cause == "zero-weight":
        msg = (f"{name(at.name)}'s weights are exactly zero (a zero-initialised output layer), so the "
               f"{len(up)} weight layer{'s' if len(up) != 1 else ''} before it get an exactly-zero gradient at step 0 "
               "only: the first update makes it non-zero. Not a defect; keep training those weights.")
        fixes.append("Nothing to do if the zero init is deliberate (it is common for output heads and residual "
                     "branches); do not freeze the layers before it.")
        return r.finding(at.name, msg, evidence, fixes, Severity.INFO)
    elif cause == "zero-input":
        msg = (f"No learning signal: the {len(up)} weight layer{'s' if len(up) != 1 else ''} up to {name(last_zero.name)} "
               f"({fmt(n_up / total * 100)}% of the trainable parameters) get an exactly-zero weight gradient in every "
               f"step, although the error signal reaches them (|dL/dy| = {fmt(last_zero.output_grad_norm)} at "
               f"{name(last_zero.name)}): their inputs are zero or so small that dL/dy times the input underflows. "
               "The activations vanish on the way forward.")
        norms = [l for l in up if any(t in l.type for t in NORM_TYPES)]
        tiny_gamma = [l for l in norms if l.norm_weight_rms is not None and l.norm_weight_rms < 0.1]
        small = [l for l in weight_layers(stats) if l in up and l.weight_rms and l.fan_in
                 and l.weight_rms < 0.25 * (2.0 / l.fan_in) ** 0.5]
        if tiny_gamma:
            evidence["tiny_norm_weights"] = {l.name: l.norm_weight_rms for l in tiny_gamma}
            fixes += _tiny_gamma_fix(stats)
        elif norms:
            fixes.append(f"Check the normalisation layers' scale (e.g. {name(norms[0].name)}): a BatchNorm/LayerNorm "
                         "whose weight (gamma) is initialised near 0 instead of 1 multiplies the activations by it "
                         "at every layer, and an eps larger than the activations' variance stops it from "
                         "restoring their scale.")
        if small:
            w = small[0]
            fixes.append(X.fix(f"Initialise the weights at He scale: {name(w.name)} has std {fmt(w.weight_rms)} "
                               f"against {fmt((2.0 / w.fan_in) ** 0.5)} for He (torch.nn.init.kaiming_normal_).",
                               X.init([l.name for l in small], "kaiming-normal", nonlinearity="relu")))
    elif cause == "loss":
        fixes.append("The loss does not change with the model's output (it multiplies it by zero or compares it): "
                     "check the loss function and the targets.")
    else:
        fixes.append(f"Look at the model's forward {where}: "
                     "argmax, round, comparisons (>, ==), .detach(), .long()/.int() casts and torch.no_grad() have no "
                     "gradient, a multiplication by an all-zero tensor (a zero mask, a zero-initialised scale) "
                     "passes none, and torch.utils.checkpoint(..., use_reentrant=True) gives no gradient to the "
                     "layers inside when none of its inputs requires grad (use use_reentrant=False).")
    fixes.append(X.fix("Check by hand: loss.backward() and print p.grad.abs().max() for the first layer; it must be "
                       "> 0.", reason=X.NOTHING))
    return r.finding(at.name if at is not None else last_zero.name, msg, evidence, fixes, Severity.ERROR)


def _tiny_gamma_fix(stats: RunStats) -> list[str]:
    tiny = [l for l in stats.layers if l.norm_weight_rms is not None and l.norm_weight_rms < 0.1]
    if not tiny:
        return []
    g = tiny[0]
    return [X.fix(f"{len(tiny)} normalisation layer{'s have' if len(tiny) > 1 else ' has'} a scale (gamma) near 0 "
                  f"(e.g. {name(g.name)}: RMS {fmt(g.norm_weight_rms)} instead of 1): each multiplies the activations "
                  "by it, so they shrink layer after layer. Initialise the gammas to 1 (torch.nn.init.ones_(bn.weight)); "
                  "a library that draws them from N(0, initializer_range) has an init bug.",
                  X.norm_scale([l.name for l in tiny], 1.0))]


def _depth_fixes(stats: RunStats, profile: list, per_layer: float) -> list[str]:
    fixes = _tiny_gamma_fix(stats)
    sat = activation_layers(stats, S.SIGMOID, S.TANH)
    relu = activation_layers(stats, S.RELU)
    weights = weight_layers(stats)
    # He init is for the layers that feed a ReLU; the output layer keeps its own (small) init, else the
    # logits start large and the loss at step 0 far above ln C (verified: initial-loss appears otherwise).
    hidden = weights[:-1] if len(weights) > 1 else weights
    head = X.init([weights[-1].name], "normal", std=0.02) if len(weights) > 1 else None
    small_head = " (the output layer with normal_(w, std=0.02), so the first logits stay near 0)" if head else ""
    if sat:
        swappable = [l for l in sat if l.role == S.ACTIVATION and not is_gate(l)]
        steps = ((X.swap([l.name for l in swappable], "relu"),
                  X.init([w.name for w in hidden], "kaiming-normal", nonlinearity="relu"), head)
                 if len(swappable) == len(sat) else ())
        fixes.append(X.fix(f"Replace {describe_group(sat)} with nn.ReLU (or nn.LeakyReLU(0.01)) and initialise the "
                           f"{len(hidden)} hidden weight layers with torch.nn.init.kaiming_normal_(w, "
                           f"nonlinearity='relu'){small_head}: "
                           "sigmoid's derivative is at most 0.25, so a sigmoid chain shrinks the gradient at every "
                           "layer.", *steps,
                           reason="the sigmoid/tanh are calls in forward's code (or gates), not modules gradcheck can "
                                  "swap"))
    elif relu or weights:
        low = [w for w in weights if w.weight_rms and w.fan_in and w.weight_rms < 0.8 * (2.0 / w.fan_in) ** 0.5]
        detail = ""
        if low:
            w = low[0]
            detail = (f" (e.g. {name(w.name)} has weight std {fmt(w.weight_rms)}, He init would give "
                      f"{fmt((2.0 / w.fan_in) ** 0.5)})")
        fixes.append(X.fix(f"Initialise the {len(hidden)} hidden weight layers with torch.nn.init.kaiming_normal_(w, "
                           f"nonlinearity='relu') (He init, std = sqrt(2/fan_in)){detail}{small_head}: PyTorch's "
                           f"default init shrinks the signal in deep plain stacks; measured {x_factor(per_layer)} per "
                           "layer.", X.init([w.name for w in hidden], "kaiming-normal", nonlinearity="relu"), head))
    if not has_normalization(stats):
        fixes.append(X.fix(f"Add normalisation (nn.BatchNorm1d/2d after each Linear/Conv, or nn.LayerNorm) to the "
                           f"{len(weights)} weight layers so each layer's inputs keep unit scale.",
                           reason=X.ARCHITECTURE))
    if len(profile) >= 6:
        fixes.append(X.fix(f"Add residual (skip) connections around blocks so the gradient has an identity path "
                           f"back to {name(profile[0].name)}.", reason=X.ARCHITECTURE))
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
            fixes.append(X.fix(f"Replace nn.RNN {name(layer.name)} with nn.LSTM or nn.GRU: the gates keep a path "
                               "for the gradient through time.", reason=X.ARCHITECTURE))
            fixes.append(X.fix(f"Initialise {name(layer.name)}.weight_hh_l0 with torch.nn.init.orthogonal_{sig}.",
                               X.orthogonal([f"{layer.name}.weight_hh_l0"], 1.0)))
        elif layer.recurrent == "LSTM":
            fixes.append(X.fix(f"Initialise {name(layer.name)}'s forget-gate bias to 1 (bias_hh_l0[H:2H] = 1 for "
                               "nn.LSTM) so the cell state carries gradient across more steps.",
                               X.forget_bias([layer.name], 1.0)))
        else:
            fixes.append(X.fix(f"Initialise {name(layer.name)}'s forget-gate bias to 1 (bias_hh_l0[H:2H] = 1 for "
                               "nn.LSTM) so the cell state carries gradient across more steps.",
                               reason="a GRU has no forget-gate bias to set"))
        fixes.append(X.fix("Pool over all time steps (mean/max of the outputs) or use a bidirectional layer instead "
                           "of reading only the last hidden state; or shorten sequences (truncated BPTT).",
                           reason=X.CODE_CHANGE))
        # Gated cells at init decay too, but their gates can learn to keep information: report, don't fail.
        sev = Severity.INFO if gated else r.severity
        out.append(r.finding(layer.name, msg, evidence, fixes, sev))
    return out


RULE = vanishing_gradients
