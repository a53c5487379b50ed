from __future__ import annotations

import math
from typing import Any

from gradcheck_cli import fixes as X
from gradcheck_cli.findings import Finding, Severity
from gradcheck_cli.rules._common import fmt, list_names, name
from gradcheck_cli.rules.base import Rule, rule
from gradcheck_cli.rules.trajectory import nonfinite_findings
from gradcheck_cli.stats import RunStats


@rule(id="non-finite", code="GC103", severity=Severity.ERROR)
def non_finite(stats: RunStats, opts: dict[str, Any], r: Rule) -> list[Finding]:
    """NaN or Inf in the inputs, the loss, an activation or a gradient.

    What it does:
        Counts NaN/Inf values in the input batch, the loss of every step, every measured layer's output
        (forward) and output gradient (backward), and every parameter gradient. It reports where they
        first appear: the first layer in forward order with a non-finite output, and, when the forward
        pass was finite, the first layer in backward order whose gradient is non-finite.

        With `--train-steps N`, when step 0 is finite, it reports the training step where NaN/Inf first
        appear, whether the loss, a gradient or the weights (after an update) went first, and the first
        layer or op (from a diagnosis re-run of that step); the rehearsal stops there.

    Why it matters:
        One NaN poisons every weight it touches through the optimizer step, and training never recovers.
        Typical causes: log(0), division by a zero standard deviation, exp overflow, sqrt at 0 in the
        backward pass (its derivative is inf, times 0 gives NaN even when the loss is finite), and
        learning rates large enough to blow the weights up.

    Example:
        examples/nan_loss.py computes log(softmax(50 * logits)) by hand: softmax underflows to 0 and the
        loss is inf/NaN. examples/nan_backward_sqrt.py takes sqrt(sum(x**2)) of a vector that is exactly
        zero: the loss is finite but every gradient is NaN.

    Fix:
        Guard the operation at the first non-finite layer: add an epsilon (torch.log(x + 1e-8),
        x / (std + 1e-5), torch.sqrt(x + 1e-12)), clamp before exp, use the fused stable forms
        (F.log_softmax, F.cross_entropy, nn.BCEWithLogitsLoss, torch.logsumexp); clean NaN/Inf from the
        data and normalise inputs; clip gradients and lower the learning rate.

    References:
        AUTOTRAINER (ICSE'21) and DeepDiagnosis (ICSE'22) flag NaN/Inf; torch.autograd.detect_anomaly
        finds the backward op that produced a NaN (at 2-3x the cost).
    """
    out: list[Finding] = []
    specific = _dtype_and_eps_fixes(stats)
    if stats.input_nonfinite:
        out.append(r.finding(None, f"The input batch itself contains {stats.input_nonfinite} NaN/Inf values.",
                             {"input_nonfinite_values": stats.input_nonfinite},
                             ["Clean the data before training: drop or repair rows with NaN/Inf "
                              "(torch.nan_to_num, or filter in the Dataset).",
                              "Normalise inputs (standardise features, scale pixels to [0, 1])."]))
    bad_steps = [i for i, v in enumerate(stats.losses) if not math.isfinite(v)]
    fkind, fwd = stats.origin(stats.first_nonfinite_forward)
    bkind, bwd = stats.origin(stats.first_nonfinite_backward)
    param_layers = [l.name for l in stats.layers if l.nonfinite_param_grads]
    if bad_steps or fwd is not None:
        where, layer_name, evidence = _origin(fkind, fwd, "forward")
        evidence.update({"nonfinite_loss_steps": len(bad_steps), "steps": stats.steps, "losses": stats.losses,
                         "layers_with_nonfinite_param_grads": param_layers})
        if bad_steps:
            msg = f"The loss is {fmt(stats.losses[bad_steps[0]])} in {len(bad_steps)} of {stats.steps} steps"
            msg += f"; the first NaN/Inf appears {where} during forward." if where else (
                "; the inputs already contain NaN/Inf." if stats.input_nonfinite else
                " although every measured layer output is finite (it arises in the loss).")
        else:
            msg = (f"NaN/Inf values appear {where} during forward, although the loss stays finite "
                   "(they are masked or reduced away).")
        out.append(r.finding(layer_name, msg, evidence, specific + _forward_fixes(fkind, fwd, where)))
    elif bwd is not None or param_layers:
        where, layer_name, evidence = _origin(bkind, bwd, "backward")
        if not where and param_layers:
            layer_name, where = param_layers[0], f"at {name(param_layers[0])}"
        elif layer_name is None and param_layers:   # an op in the model's own forward: point at the
            layer_name = param_layers[0]            # first layer whose gradients it poisons
        evidence.update({"layers_with_nonfinite_param_grads": param_layers, "losses": stats.losses})
        poisoned = f" ({list_names(param_layers)})" if param_layers else ""
        msg = (f"The loss and the forward pass are finite, but the gradient turns NaN/Inf in backward, first {where}; "
               f"{len(param_layers)} layer{'s get' if len(param_layers) != 1 else ' gets'} non-finite parameter "
               f"gradients{poisoned}.")
        op = bwd["op"] if bkind == "op" else None
        fixes = []
        if op in ("sqrt", "pow", "rsqrt"):
            fixes.append(f"The derivative of {op} at 0 is inf, and inf * 0 = NaN: at {bwd['file']}:{bwd['line']} use "
                         "torch.sqrt(x + 1e-12) or x.clamp_min(1e-12).sqrt(), or torch.linalg.vector_norm / "
                         "F.normalize(x, eps=1e-12) instead of sqrt(sum(x**2)).")
        elif op is not None:
            fixes.append(f"Guard {op}() at {bwd['file']}:{bwd['line']}: its gradient overflows for inputs at or near "
                         "0 (add an epsilon or clamp the input).")
        else:
            fixes.append(f"Look for sqrt, a fractional pow, norm or division at 0 just after {where.replace('at ', '', 1)}"
                         " in forward: the derivative of sqrt at 0 is inf and inf * 0 = NaN. Use torch.sqrt(x + 1e-12) "
                         "or F.normalize(x, eps=1e-12).")
        fixes = specific + fixes
        fixes += ["Run one step under torch.autograd.detect_anomaly() to get the backward op's traceback.",
                  "Clip the gradient norm (torch.nn.utils.clip_grad_norm_) so one bad step cannot poison the weights."]
        out.append(r.finding(layer_name, msg, evidence, fixes))
    return out or nonfinite_findings(stats, r)   # step 0 was finite: when did training go NaN/Inf?


def _dtype_and_eps_fixes(stats: RunStats) -> list[str]:
    """Causes the statistics name outright: float16 overflow, normalisation layers with eps = 0."""
    fixes = []
    if stats.param_dtype == "float16":
        fixes.append("The model runs in float16, whose largest value is 65504: activations, logits or the loss "
                     "overflow to inf. Compute the loss in float32 (F.cross_entropy(logits.float(), y)), keep "
                     "normalisation and softmax in float32, or train in bfloat16 / with torch.autocast and "
                     "torch.cuda.amp.GradScaler instead of casting the model with .half().")
    zero_eps = [l for l in stats.layers if l.norm_eps is not None and l.norm_eps == 0]
    if zero_eps:
        l = zero_eps[0]
        fixes.append(X.fix(f"{name(l.name)} ({l.type}) has eps=0"
                           + (f" (and {len(zero_eps) - 1} more normalisation layers)" if len(zero_eps) > 1 else "")
                           + ": on a constant input it divides 0 by 0. Give it an eps (nn.LayerNorm(d, eps=1e-5); "
                           "in a Hugging Face config, layer_norm_eps / rms_norm_eps / batch_norm_eps).",
                           X.norm_eps([z.name for z in zero_eps], 1e-5)))
    return fixes


def _origin(kind: str | None, obj: Any, phase: str) -> tuple[str, str | None, dict[str, Any]]:
    """(phrase, layer for the finding, evidence) for where NaN/Inf first appear."""
    if kind == "layer":
        count = obj.nonfinite_outputs if phase == "forward" else obj.nonfinite_output_grads
        return (f"in the {'output' if phase == 'forward' else 'gradient'} of {name(obj.name)} ({obj.type})",
                obj.name, {f"first_nonfinite_{phase}": obj.name, "nonfinite_calls": count})
    if kind == "op":
        count = obj["forward_nonfinite"] if phase == "forward" else obj["backward_nonfinite"]
        module = None if obj["module"] == "(model)" else obj["module"]
        return (f"at {obj['label']}", module,
                {f"first_nonfinite_{phase}": obj["label"], "op": obj["op"], "file": obj["file"],
                 "line": obj["line"], "nonfinite_calls": count})
    return "", None, {}


def _forward_fixes(kind: str | None, obj: Any, where: str) -> list[str]:
    fixes = []
    op = obj["op"] if kind == "op" else None
    at = f" at {obj['file']}:{obj['line']}" if kind == "op" else (f" {where}" if where else "")
    if op in ("log", "log2", "log10", "log1p", "logit"):
        fixes.append(f"{op}() of 0 is -inf{at}: use the fused stable forms (F.log_softmax / F.cross_entropy instead "
                     "of log(softmax(x)), nn.BCEWithLogitsLoss instead of log(sigmoid(x))), or torch.log(x + 1e-8).")
    elif op in ("exp", "expm1", "pow"):
        fixes.append(f"{op}() overflows to inf{at}: clamp its input (torch.exp(x.clamp(max=80))) or use "
                     "torch.logsumexp / F.softmax, which subtract the maximum first.")
    elif op in ("div", "reciprocal", "rsqrt"):
        fixes.append(f"Division by zero{at}: add an epsilon to the denominator (x / (std + 1e-5)).")
    elif op in ("sqrt",):
        fixes.append(f"sqrt() of a negative number is NaN{at}: clamp its input with x.clamp_min(0) + 1e-12.")
    else:
        fixes.append(f"Guard log/division/exp{at}: torch.log(x + 1e-8) or x.clamp_min(1e-8).log(), "
                     "x / (std + 1e-5), torch.exp(x.clamp(max=80)).")
    if op not in ("log", "log2", "log10", "log1p", "logit"):
        fixes.append("Use the numerically stable fused forms: F.log_softmax / F.cross_entropy instead of "
                     "log(softmax(x)), nn.BCEWithLogitsLoss instead of log(sigmoid(x)), torch.logsumexp.")
    fixes.append("Clip the gradient norm (torch.nn.utils.clip_grad_norm_) and lower the learning rate if the weights "
                 "have grown large.")
    return fixes


RULE = non_finite
