"""Calibration: run gradcheck on healthy and clearly broken models and print the measured figures.

    python benchmarks/calibrate.py            # everything except the 124M GPT-2 / BERT-base
    python benchmarks/calibrate.py --large    # also GPT-2 124M and BERT-base

Prints one markdown row per model: the figures each rule thresholds (early/late error-signal ratio,
global gradient norm, worst saturation, worst dead-unit share, recurrent through-time ratio), the rules
that fired at warning or above, and whether that matches the expectation (OK / MISS / FALSE ALARM).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gradcheck_cli.config import Settings  # noqa: E402
from gradcheck_cli.pipeline import run_check  # noqa: E402
from gradcheck_cli.rules._common import depth_profile, ends, geo_median  # noqa: E402
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
]
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


def figures(stats: RunStats) -> dict[str, float | None]:
    prof = depth_profile(stats)
    ratio = None
    if len(prof) >= 3:
        early, late = ends(prof)
        ratio = geo_median(l.output_grad_norm for l in early) / geo_median(l.output_grad_norm for l in late)
    sat = [l.saturated_fraction for l in stats.layers if l.saturated_fraction is not None]
    dead = [l.dead_fraction for l in stats.layers if l.dead_fraction is not None]
    rec: list[LayerStats] = [l for l in stats.layers if l.time_steps]
    tt = None
    if rec:
        l = rec[0]
        tt = l.time_grad_min_max if l.bidirectional else l.time_grad_first_last
    return {"ratio": ratio, "gnorm": stats.total_grad_norm, "sat": max(sat) if sat else None,
            "dead": max(dead) if dead else None, "time": tt}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--large", action="store_true")
    args = ap.parse_args()
    cases = CASES + (LARGE if args.large else [])
    print("| model | expected | early/late ratio | grad norm | max sat | max dead | RNN time ratio | fired (>= warning) | info | verdict | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    bad = 0
    for spec, extra, expected in cases:
        if "hf_" in spec:
            try:
                import transformers  # noqa: F401
            except ImportError:
                print(f"| {spec} | skipped: transformers not installed |")
                continue
        from gradcheck_cli.measure import run_passes  # noqa: F401  (import cost outside the timing)
        t = time.perf_counter()
        report = run_check(Settings(model=spec, **extra))
        dt = time.perf_counter() - t
        from gradcheck_cli.stats import RunStats as RS
        stats = RS.from_dict({**report.run, "layers": report.layers})
        fig = figures(stats)
        fired = {x.rule for x in report.findings if x.severity.rank >= 2}
        info = {x.rule for x in report.findings if x.severity.rank < 2}
        if expected:
            verdict = "OK" if expected <= fired else "MISS"
        else:
            verdict = "OK" if not fired else "FALSE ALARM"
        bad += verdict != "OK"
        name = spec.replace("benchmarks/calibration_models.py:", "calib:").replace("examples/", "")
        if extra.get("input_shape"):
            name += " " + "x".join(map(str, extra["input_shape"]))
        print(f"| {name} | {', '.join(sorted(expected)) or 'healthy'} | {f(fig['ratio'])} | {f(fig['gnorm'])} | "
              f"{f(fig['sat'])} | {f(fig['dead'])} | {f(fig['time'])} | {', '.join(sorted(fired)) or '-'} | "
              f"{', '.join(sorted(info)) or '-'} | {verdict} | {dt:.1f} |", flush=True)
    print(f"\n{len(cases) - bad}/{len(cases)} as expected")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
