"""Calibration: run gradcheck on healthy and clearly broken models and print the measured figures.

    python benchmarks/calibrate.py            # the bundled examples and benchmarks/calibration_models.py
    python benchmarks/calibrate.py --hf       # also 80 Hugging Face architectures (benchmarks/hf_models.py)
    python benchmarks/calibrate.py --large    # also GPT-2 124M and BERT-base

Prints one markdown row per model: the figures each rule thresholds (early/late error-signal ratio,
global gradient norm, worst saturation, worst dead-unit share, recurrent through-time ratio, step-0 loss
over ln C, slowest weight layer's |grad|/|weight| over the model's median), the rules that fired at
warning or above, and whether that matches the expectation (OK / MISS / FALSE ALARM); then the margins:
for every detector, the worst healthy figure and the mildest broken figure it caught.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gradcheck_cli.config import Settings  # noqa: E402
from gradcheck_cli.pipeline import run_check  # noqa: E402
from gradcheck_cli.rules._common import (  # noqa: E402
    depth_profile, ends, geo_median, signal_cut, weight_layers, xavier_std,
)
from gradcheck_cli.stats import LayerStats, RunStats  # noqa: E402

E, C = "examples/", "benchmarks/calibration_models.py:"
# (spec, extra settings, expected rules at warning or above; empty set = healthy)
CASES = [
    (E + "healthy_mlp.py:build", {}, set()),
    (E + "healthy_resnet.py:build", {}, set()),
    (E + "healthy_resnet.py:build_default_init", {}, set()),
    (E + "healthy_resnet.py:build_resnet56", {}, set()),
    (E + "healthy_transformer.py:build", {}, set()),
    (E + "healthy_lstm.py:build", {}, set()),
    (E + "healthy_lstm.py:build_bidirectional", {}, set()),
    (E + "healthy_lstm.py:build", {"input_shape": (8, 200)}, set()),
    (E + "hf_gpt2.py:build", {}, set()),
    (E + "hf_bert.py:build", {}, set()),
    (E + "vanishing_sigmoid_mlp.py:build", {}, {"vanishing-gradients"}),
    (C + "nielsen_sigmoid_4hidden", {}, {"vanishing-gradients"}),
    (C + "nielsen_sigmoid_4hidden_gaussian", {}, {"saturated-activations"}),
    (C + "deep_tanh_small_init", {}, {"vanishing-gradients"}),
    (C + "deep_relu_default_init_20", {}, {"vanishing-gradients"}),
    (C + "sigmoid_cnn", {}, {"vanishing-gradients"}),
    (E + "rnn_vanishing.py:Net", {"input_shape": (8, 100, 16)}, {"vanishing-gradients"}),
    (E + "exploding_deep_relu.py:build", {}, {"exploding-gradients"}),
    (C + "plain_cnn_init_x2", {}, {"exploding-gradients"}),
    (C + "mlp_orthogonal_gain3", {}, {"exploding-gradients"}),
    (E + "rnn_exploding.py:Net", {"input_shape": (8, 100, 16)}, {"exploding-gradients"}),
    (C + "relu_rnn_orthogonal_1_2", {"input_shape": (8, 100, 8)}, {"vanishing-gradients"}),
    (C + "relu_rnn_orthogonal_2", {"input_shape": (8, 100, 8)}, {"exploding-gradients"}),
    (E + "nan_loss.py:Net", {}, {"non-finite"}),
    (E + "nan_backward_sqrt.py:Net", {}, {"non-finite"}),
    (C + "zero_std_division", {}, {"non-finite"}),
    (C + "exp_overflow", {}, {"non-finite"}),
    (E + "saturated_tanh.py:build", {}, {"saturated-activations"}),
    (C + "raw_pixels_sigmoid", {}, {"saturated-activations"}),
    (C + "tanh_big_init_conv", {}, {"saturated-activations"}),
    (E + "dead_relu.py:build", {}, {"dead-relus"}),
    (C + "dead_conv_functional", {}, {"dead-relus"}),
    (C + "dead_relu_large_lr_step", {}, {"dead-relus"}),
    (E + "unused_parameters.py:Net", {}, {"unused-parameters"}),
    (C + "detached_branch", {}, {"unused-parameters"}),
    # issue 9: no learning signal, and zero gradients that are not defects
    (E + "relu_after_output.py:build", {}, {"dead-relus"}),
    (E + "relu_after_output.py:build_fixed", {}, set()),
    (E + "softmax_single_output.py:build", {"batch": E + "softmax_single_output.py:batch"}, {"vanishing-gradients"}),
    (E + "softmax_single_output.py:build_fixed", {"batch": E + "softmax_single_output.py:batch"}, set()),
    (C + "round_in_forward", {}, {"vanishing-gradients"}),
    (C + "zero_mask_multiply", {}, {"vanishing-gradients"}),
    (C + "zero_init_head", {}, set()),
    (C + "zero_init_residual_resnet", {}, set()),
    (E + "rezero.py:build", {}, set()),
    (E + "multi_output.py:Net", {}, set()),
    # moderate but steady decay / growth
    (C + "nielsen_sigmoid_4hidden_mnist_like", {"batch": C + "nielsen_batch"}, {"vanishing-gradients"}),
    (C + "nielsen_tanh_xavier_mnist_like", {"batch": C + "nielsen_batch"}, set()),
    (C + "tanh_mlp_xavier_8", {}, set()),
    (E + "rnn_exploding.py:Net", {"input_shape": (8, 20, 16)}, {"exploding-gradients"}),
    # dead units vs correlation collapse
    (C + "plain_relu_cnn_he_30", {}, set()),
    (E + "relu_collapse.py:build", {}, set()),
    (C + "plain_relu_mlp_he_30_bias_minus_2", {}, {"dead-relus"}),
    (C + "se_resnet", {}, set()),
    (C + "se_resnet_dead_se", {}, {"dead-relus"}),
]
H = "benchmarks/hf_models.py:"
# Architectures whose library init has a real defect (named in docs/calibration.md): rule expected.
HF_DEFECTS = {
    "mobilenet_v1": {"initial-loss"},         # MobileNetV1Config.classifier_dropout_prob = 0.999
    "efficientnet": {"vanishing-gradients"},  # BatchNorm gammas initialised N(0, 0.02)
    "mobilevit": {"vanishing-gradients"},     # BatchNorm gammas initialised N(0, 0.02)
}
HF_BROKEN = [
    (H + "llama_init_1", {}, {"initial-loss"}),
    (H + "llama_init_1e_5", {}, {"vanishing-gradients"}),
]


def hf_cases() -> list:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import hf_models

    out = []
    for name in hf_models.ARCHS:
        extra: dict = {}
        if hf_models.input_shape(name):
            extra["input_shape"] = hf_models.input_shape(name)
        if hf_models.needs_batch(name):
            extra["batch"] = H + hf_models.needs_batch(name)
        out.append((H + name, extra, HF_DEFECTS.get(name, set())))
    return out + HF_BROKEN
LARGE = [
    (E + "hf_gpt2.py:build_124m", {"input_shape": (2, 64)}, set()),
    (E + "hf_bert.py:build_base", {"input_shape": (2, 64)}, set()),
]


def f(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.2g}"


def off_cell(off: tuple | None) -> str:
    if off is None:
        return "-"
    return f"{f(off[0])} ({f(off[1])})" if off[1] is not None else f(off[0])


def figures(stats: RunStats) -> dict[str, float | None]:
    prof = depth_profile(stats)
    ratio = None
    if len(prof) >= 3:
        early, late = ends(prof)
        ratio = geo_median(l.output_grad_norm for l in early) / geo_median(l.output_grad_norm for l in late)
    sat = [l.saturated_fraction for l in stats.layers if l.saturated_fraction is not None]
    from gradcheck_cli.rules.dead_relu import RULE as DEAD, _dead_units
    opts = {o.name: o.default for o in DEAD.options}   # dead units as the rule counts them
    dead = [_dead_units(stats, l, opts) / l.units for l in stats.layers
            if l.dead_units is not None and (l.units or 0) >= 16]
    off = [(l.off_fraction, l.coherence) for l in stats.layers if l.off_fraction is not None and (l.units or 0) >= 16]
    rec: list[LayerStats] = [l for l in stats.layers if l.time_steps]
    tt = None
    if rec:
        l = rec[0]
        tt = l.time_grad_min_max if l.bidirectional else l.time_grad_first_last
    init = None
    if stats.loss_kind in ("cross-entropy", "bce-with-logits") and (stats.loss_classes or 0) >= 2 and stats.losses:
        init = stats.losses[0] / math.log(stats.loss_classes)
    speeds = [l.grad_norm / l.weight_norm for l in weight_layers(stats)
              if l.grad_norm and l.weight_norm and math.isfinite(l.grad_norm) and math.isfinite(l.weight_norm)]
    slow = min(speeds) / geo_median(speeds) if len(speeds) >= 3 else None
    scales = [l.weight_rms / xavier_std(l) for l in weight_layers(stats) if l.weight_rms and xavier_std(l)]
    tiny = min(scales) if scales else None
    return {"ratio": ratio, "gnorm": stats.total_grad_norm, "sat": max(sat) if sat else None,
            "dead": max(dead) if dead else None, "off": max(off, key=lambda x: x[0]) if off else None, "time": tt, "init": init, "slow": slow, "tiny": tiny,
            "zero": signal_cut(stats) is not None}


# (detector, figure key, rule, direction: fires "below" or "above", threshold, label)
DETECTORS = [
    ("vanishing, depth (early/late)", "ratio", "vanishing-gradients", "below", 1e-3),
    ("exploding, depth (early/late)", "ratio", "exploding-gradients", "above", 1e3),
    ("saturated sigmoid/tanh (share)", "sat", "saturated-activations", "above", 0.5),
    ("dead ReLUs (share of units, >= 16 units)", "dead", "dead-relus", "above", 0.5),
    ("RNN through time (earliest/latest)", "time", None, "both", None),
    ("initial loss (step-0 loss / ln C)", "init", "initial-loss", "above", 2.0),
    ("slowest weight layer (|g|/|w| over median; fails only with tiny weights)", "slow", "vanishing-gradients", "below", 1e-5),
    ("smallest weight std / Xavier std (tiny weights)", "tiny", "vanishing-gradients", "below", 0.01),
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--large", action="store_true")
    ap.add_argument("--hf", action="store_true", help="also the Hugging Face architectures")
    ap.add_argument("--only", default=None, help="comma-separated substrings: run only the models whose spec "
                                                 "ends with one of them (e.g. hf_models.py:regnet)")
    args = ap.parse_args()
    cases = CASES + (hf_cases() if args.hf else []) + (LARGE if args.large else [])
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        cases = [c for c in cases if any(c[0].endswith(w) for w in wanted)]
    print("| model | expected | early/late ratio | grad norm | max sat | max dead | max off (coherence) | RNN time ratio | loss0/lnC | "
          "slowest | min w/Xavier | fired (>= warning) | info | verdict | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    bad = 0
    rows = []
    for spec, extra, expected in cases:
        if "hf_" in spec:
            try:
                import transformers  # noqa: F401
            except ImportError:
                print(f"| {spec} | skipped: transformers not installed |")
                continue
        from gradcheck_cli.measure import run_passes  # noqa: F401  (import cost outside the timing)
        t = time.perf_counter()
        report = run_check(Settings(model=spec, device="cpu", **extra))
        dt = time.perf_counter() - t
        from gradcheck_cli.stats import RunStats as RS
        known = {fl.name for fl in dataclasses.fields(RS)}
        stats = RS.from_dict({**{k: v for k, v in report.run.items() if k in known}, "layers": report.layers})
        fig = figures(stats)
        fired = {x.rule for x in report.findings if x.severity.rank >= 2}
        info = {x.rule for x in report.findings if x.severity.rank < 2}
        if expected:
            verdict = "OK" if expected <= fired else "MISS"
        else:
            verdict = "OK" if not fired else "FALSE ALARM"
        bad += verdict != "OK"
        name = (spec.replace("benchmarks/calibration_models.py:", "calib:").replace("benchmarks/hf_models.py:", "hf:")
                .replace("examples/", ""))
        if extra.get("input_shape"):
            name += " " + "x".join(map(str, extra["input_shape"]))
        rows.append((name, expected, fig, fired))
        print(f"| {name} | {', '.join(sorted(expected)) or 'healthy'} | {f(fig['ratio'])} | {f(fig['gnorm'])} | "
              f"{f(fig['sat'])} | {f(fig['dead'])} | {off_cell(fig['off'])} | {f(fig['time'])} | {f(fig['init'])} | {f(fig['slow'])} | "
              f"{f(fig['tiny'])} | "
              f"{', '.join(sorted(fired)) or '-'} | {', '.join(sorted(info)) or '-'} | {verdict} | {dt:.1f} |",
              flush=True)
    print(f"\n{len(cases) - bad}/{len(cases)} as expected")
    print("\n| detector | threshold | healthy models (worst) | broken models it caught (mildest) |")
    print("|---|---|---|---|")
    for label, key, rule_id, direction, thr in DETECTORS:
        if direction == "both":
            continue
        healthy = [(r[2][key], r[0]) for r in rows if not r[1] and r[2][key] is not None
                   and math.isfinite(r[2][key])]
        caught = [(r[2][key], r[0]) for r in rows if rule_id in r[1] and rule_id in r[3] and r[2][key] is not None
                  and (r[2][key] < thr if direction == "below" else r[2][key] > thr)]
        pick = min if direction == "below" else max
        worst = pick(healthy) if healthy else None
        mild = (max if direction == "below" else min)(caught) if caught else None
        sign = "<" if direction == "below" else ">"
        print(f"| {label} | {sign} {thr:g} | {f(worst[0]) + ' (' + worst[1] + ')' if worst else '-'} | "
              f"{f(mild[0]) + ' (' + mild[1] + ')' if mild else '-'} |")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
