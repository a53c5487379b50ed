"""Which fix resolves which failure: every broken example through `gradcheck check --verify-fixes=all`, one
table row per finding and fix that gradcheck could apply (docs/calibration.md, "Verified fixes").

    python benchmarks/verify_fixes.py            # the table (Markdown) on stdout; exit 1 if a first fix of a
                                                 # warning/error does not resolve its finding, or a healthy
                                                 # model gets a verification
    python benchmarks/verify_fixes.py --quick    # the eight cases of issue 14 only
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
C = "benchmarks/calibration_models.py:"
# (label, argv after `check`); the eight cases first
CASES = [
    ("vanishing sigmoid MLP", ["examples/vanishing_sigmoid_mlp.py:build"]),
    ("dead ReLUs (biases -3)", ["examples/dead_relu.py:build"]),
    ("saturated tanh", ["examples/saturated_tanh.py:build"]),
    ("exploding deep ReLU", ["examples/exploding_deep_relu.py:build"]),
    ("default-init deep ReLU", [C + "deep_relu_default_init_20"]),
    ("Xavier 30-layer ReLU CNN", [C + "plain_relu_cnn_xavier_30"]),
    ("single-unit softmax", ["examples/softmax_single_output.py:build", "--loss", "mse"]),
    ("diverging learning rate", ["examples/train_diverging_mlp.py:build", "--train-steps", "30",
                                 "--optimizer", "examples/train_diverging_mlp.py:optimizer"]),
]
MORE = [
    ("ReLU after the output", ["examples/relu_after_output.py:build"]),
    ("vanilla RNN, 100 steps", ["examples/rnn_vanishing.py:Net", "--input-shape", "8,100,16"]),
    ("exploding RNN", ["examples/rnn_exploding.py:Net", "--input-shape", "8,100,16"]),
    ("tanh, N(0, 0.01) weights", [C + "deep_tanh_small_init"]),
    ("learning-rate typo", ["examples/train_lr_typo.py:build", "--train-steps", "20", "--optimizer", "adam",
                            "--lr", "1e-9"]),
    ("update too large", ["examples/train_update_too_large.py:build", "--train-steps", "20", "--optimizer", "adam",
                          "--lr", "0.5"]),
    ("missing parameters", ["examples/train_missing_params.py:build", "--train-steps", "10",
                            "--optimizer", "examples/train_missing_params.py:optimizer"]),
    ("ReLUs dying in training", ["examples/train_dying_relu.py:build", "--train-steps", "30", "--optimizer", "adam",
                                 "--lr", "0.05"]),
    ("NaN during training", ["examples/train_nan_onset.py:Net", "--train-steps", "30", "--optimizer",
                             "examples/train_nan_onset.py:optimizer", "--loss", "examples/train_nan_onset.py:nll"]),
    ("gradient spikes", ["examples/train_grad_spikes.py:build", "--train-steps", "30",
                         "--optimizer", "examples/train_grad_spikes.py:optimizer"]),
]
HEALTHY = [("healthy MLP", ["examples/healthy_mlp.py:build"]),
           ("healthy ResNet-20", ["examples/healthy_resnet.py:build"])]


def run(argv: list[str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "gradcheck_cli", "check", *argv, "--verify-fixes=all",
                        "--format", "json"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "NO_COLOR": "1"})
    if p.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()[-500:]}")
    return json.loads(p.stdout), time.perf_counter() - t0


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from gradcheck_cli.report.verification import before_after, new_phrase, status

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the issue's eight cases only")
    args = ap.parse_args()
    cases = CASES if args.quick else CASES + MORE
    problems: list[str] = []
    print("| model | finding | fix | change | verdict | before -> after | new | time |")
    print("|---|---|---|---|---|---|---|---|")
    for label, argv in cases:
        d, secs = run(argv)
        verify_s = d["timings"].get("verify_s", 0.0)
        for f in d["findings"]:
            ver = f.get("verification") or []
            applied = [v for v in ver if v.get("change") is not None]
            first = next((v for v in ver if v["fix"] == 0), None)
            if (label, argv) in CASES and f["severity"] != "info" and (first is None or not first.get("resolved") or first.get("new_findings")):
                problems.append(f"{label}: {f['code']}: the first fix is not verified as resolving it cleanly")
            for v in applied:
                print(f"| {label} | {f['code']} {f['severity']} | {v['fix'] + 1} | {cell(v['change'])} | {status(v)} | "
                      f"{cell(before_after(v)) or '-'} | {new_phrase(v).removeprefix('new: ') or '-'} | "
                      f"{verify_s:.1f} s |")
            if not applied:
                print(f"| {label} | {f['code']} {f['severity']} | - | (no fix gradcheck can apply) | - | - | - | "
                      f"{verify_s:.1f} s |")
        sys.stdout.flush()
    for label, argv in HEALTHY:
        d, _ = run(argv)
        if any("verification" in f for f in d["findings"]) or "verify_s" in d["timings"] and d["findings"]:
            problems.append(f"{label}: a healthy model got a verification")
        print(f"| {label} | - | - | (no findings: nothing verified) | - | - | - | "
              f"{d['timings'].get('verify_s', 0.0):.1f} s |")
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
