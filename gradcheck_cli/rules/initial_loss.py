from __future__ import annotations

import math
from typing import Any

from gradcheck_cli import fixes as X
from gradcheck_cli.findings import Finding, Severity
from gradcheck_cli.rules._common import fmt, name, weight_layers
from gradcheck_cli.rules.base import Option, Rule, rule
from gradcheck_cli.stats import RunStats


@rule(
    id="initial-loss",
    code="GC107",
    severity=Severity.WARNING,
    options=(Option("factor", 2.0, "warn when the step-0 loss is more than this many times its expected value"),
             Option("min_classes", 2, "classification losses with fewer classes than this are not judged")),
)
def initial_loss(stats: RunStats, opts: dict[str, Any], r: Rule) -> list[Finding]:
    """The loss at initialisation is far above what an unbiased classifier starts at (ln C).

    What it does:
        For a C-class cross-entropy (a language model: V tokens) the loss of an untrained model whose
        logits are small and unbiased is ln C; for a binary cross-entropy with logits it is ln 2. The rule
        takes the loss of the first step (before any update) and fires when it is more than `factor` (2)
        times that expectation. It judges only the built-in cross-entropy and bce-with-logits losses,
        including the default loss with synthetic targets; MSE, the model's own `.loss` and custom losses
        have no reference value.

    Why it matters:
        A loss several times ln C means logits that are large and confidently wrong: the softmax is
        saturated, most of the gradient goes into shrinking the logits instead of learning, and attention
        or gates behind them are often collapsed too. It points at an init far too large (a Llama built
        with initializer_range=1.0 starts at 26.7 against ln V = 6.9 in the calibration, 38.9 with a larger
        config), a missing normalisation before the
        head, an output scaled up (a temperature applied the wrong way, a dropout with p close to 1 that
        rescales the surviving features by 1/(1-p)), or targets from another label space.

    Example:
        benchmarks/hf_models.py:llama_init_1 (LlamaConfig(initializer_range=1.0)): loss 26.7 at step 0
        against ln 1000 = 6.9. Hugging Face's MobileNetV1Config defaults to classifier_dropout_prob=0.999,
        so in training mode the surviving features are multiplied by 1000: loss 5.4 against ln 10 = 2.3.

    Fix:
        Initialise the output layer small (std ~0.02, or zeros for the bias and a scaled-down weight) so the
        first logits are near 0; use the library's default init (initializer_range 0.02 for transformers);
        normalise the features before the head (LayerNorm / BatchNorm); check dropout probabilities (p is the
        share dropped, not kept); check that the targets index the right classes.

    References:
        Karpathy, "A Recipe for Training Neural Networks" (2019): verify the loss at init, -ln(1/C) for a
        softmax classifier; CS231n notes, "Sanity checks: look for correct loss at chance performance".
    """
    if stats.loss_kind not in ("cross-entropy", "bce-with-logits") or not stats.losses:
        return []
    classes = stats.loss_classes or 0
    if classes < opts["min_classes"]:
        return []
    first = stats.losses[0]
    if not math.isfinite(first):
        return []   # non-finite reports it
    expected = math.log(classes)
    ratio = first / expected
    if ratio <= opts["factor"]:
        return []
    what = "binary cross-entropy" if stats.loss_kind == "bce-with-logits" else f"{classes:,}-class cross-entropy"
    head = next((l for l in reversed(weight_layers(stats))), None)
    msg = (f"The loss at step 0 is {fmt(first)}, {fmt(ratio)} times the ln {classes:,} = {fmt(expected)} that a "
           f"{what} starts at with small unbiased logits: the logits are large and confidently wrong.")
    evidence: dict[str, Any] = {"initial_loss": first, "expected": expected, "classes": classes, "ratio": ratio,
                                "threshold": opts["factor"], "loss": stats.loss_kind, "losses": stats.losses}
    fixes = []
    if head is not None:
        if head.weight_rms is not None:
            evidence["head_weight_rms"] = head.weight_rms
        std = f" (weight std {fmt(head.weight_rms)})" if head.weight_rms is not None else ""
        # Cross-entropy with logits far from 0 grows about linearly with their scale: shrinking the head by
        # ln C / loss (and at least to std 0.02) brings the step-0 loss back near ln C.
        factor = min(expected / first, 0.02 / head.weight_rms if head.weight_rms else 1.0, 1.0)
        fixes.append(X.fix(f"Initialise the output layer {name(head.name)}{std} small, e.g. "
                           "torch.nn.init.normal_(w, std=0.02) and zeros_ for its bias, so the first logits are near 0; "
                           "for a Hugging Face model keep initializer_range at its default (0.02).",
                           X.scale_weight([head.name], factor)))
    fixes.append("Normalise the features before the output layer (LayerNorm/BatchNorm), and check every dropout "
                 "probability: p is the share dropped, and a p near 1 multiplies the surviving features by 1/(1-p) "
                 "in training mode.")
    fixes.append("Check that the targets are class indices in [0, C) of this output.")
    return [r.finding(head.name if head is not None else None, msg, evidence, fixes)]


RULE = initial_loss
