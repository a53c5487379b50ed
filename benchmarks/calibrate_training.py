"""Calibration of the trajectory thresholds (--train-steps) on the training examples: broken ones must
fire their rule, healthy twins must stay silent. Prints the Markdown table of docs/calibration.md.

    python benchmarks/calibrate_training.py

Columns (see docs/calibration.md): loss rise = peak loss / step-0 loss (loss-divergence fires > 10);
grad spike = the largest global gradient norm over the median of the steps before it, from step 3
(exploding-gradients fires > 10); steps > 0.1 = steps after step 0 with a layer's |update|/|weight|
above 0.1 (update-ratio fires at 2), and the largest ratio after step 0; min median = the smallest
per-layer median ratio (fires < 1e-6 when the loss did not fall below 10% of step 0's); died = the
largest share of a ReLU layer's units alive at step 0 and silent to the end (dead-relus fires >= 0.25);
NaN step = the step of onset.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gradcheck_cli.config import Settings  # noqa: E402
from gradcheck_cli.pipeline import run_check  # noqa: E402
from gradcheck_cli.rules.trajectory import finite_prefix, median, relus_died  # noqa: E402

EX = ROOT / "examples"


def ex(s: str) -> str:
    return str(EX / s)


CASES = [
    ("train_healthy_mlp.py:build", "healthy", {"train_steps": 60, "optimizer": ex("train_healthy_mlp.py:optimizer")}),
    ("train_healthy_cnn.py:build", "healthy", {"train_steps": 30, "optimizer": "adam", "lr": 1e-3}),
    ("train_healthy_transformer.py:build", "healthy", {"train_steps": 30, "optimizer": "adamw", "lr": 3e-4,
                                                       "input_shape": (4, 32)}),
    ("train_healthy_cnn.py:build sgd", "healthy", {"train_steps": 30, "optimizer": "sgd", "lr": 1e-2}),
    ("train_healthy_mlp.py:build adam", "healthy", {"train_steps": 60, "optimizer": "adam", "lr": 1e-3}),
    ("train_diverging_mlp.py:build", "loss-divergence",
     {"train_steps": 30, "optimizer": ex("train_diverging_mlp.py:optimizer")}),
    ("train_update_too_large.py:build", "update-ratio", {"train_steps": 20, "optimizer": "adam", "lr": 0.5}),
    ("train_lr_typo.py:build", "update-ratio", {"train_steps": 20, "optimizer": "adam", "lr": 1e-9}),
    ("train_missing_params.py:build", "update-ratio",
     {"train_steps": 10, "optimizer": ex("train_missing_params.py:optimizer")}),
    ("train_dying_relu.py:build", "dead-relus", {"train_steps": 30, "optimizer": "adam", "lr": 0.05}),
    ("train_nan_onset.py:Net", "non-finite", {"train_steps": 30, "optimizer": ex("train_nan_onset.py:optimizer"),
                                              "loss": ex("train_nan_onset.py:nll")}),
    ("train_grad_spikes.py:build", "exploding-gradients",
     {"train_steps": 30, "optimizer": ex("train_grad_spikes.py:optimizer")}),
]


def g(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "inf"
    return f"{x:.2g}"


def main() -> int:
    print("| model | expected | loss rise | grad spike | steps > 0.1 (max ratio) | min median ratio | died | "
          "NaN step | fired (>= warning) | verdict | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    bad = 0
    for name, expected, kw in CASES:
        spec = ex(name.split(" ")[0])
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            r = run_check(Settings(model=spec, **kw))
        secs = time.perf_counter() - t0
        from gradcheck_cli.stats import Trajectory  # noqa: F401

        steps = r.training["steps"]
        losses = finite_prefix([s["loss"] for s in steps])
        rise = max(losses) / losses[0] if losses and losses[0] > 0 else None
        gn = finite_prefix([s["grad_norm"] for s in steps])
        spike = max((gn[i] / median(gn[:i]) for i in range(3, len(gn)) if median(gn[:i])), default=None)
        # per-layer ratios come from the run's statistics, re-derived from the report's per-step maxima
        ratios = [s["update_ratio_max"] for s in steps[1:] if s["update_ratio_max"] is not None]
        over = sum(1 for v in ratios if v > 0.1)
        traj = _trajectory(spec, kw)
        meds = [median([v for v in rs if v is not None]) for rs in traj.update_ratios.values()
                if any(v for v in rs if v is not None)]
        died = relus_died(traj, 3)
        died_frac = max((d["died"] / d["units"] for d in died.values()), default=0.0) if traj.steps >= 8 else None
        fired = sorted({f.rule for f in r.findings if f.severity.rank >= 2})
        ok = (fired == [] if expected == "healthy" else expected in fired)
        bad += not ok
        print(f"| {name} | {expected} | {g(rise)} | {g(spike)} | {over} ({g(max(ratios, default=None))}) | "
              f"{g(min(meds, default=None))} | {g(died_frac)} | {traj.nonfinite_step if traj.nonfinite_step is not None else '-'} | "
              f"{', '.join(fired) or '-'} | {'OK' if ok else 'MISS'} | {secs:.0f} |")
    return 1 if bad else 0


def _trajectory(spec: str, kw: dict):
    """The run's Trajectory (per-layer series the report does not carry), from the same seeded run."""
    from gradcheck_cli import batches, loading, losses
    from gradcheck_cli.measure.training import TrainSettings, rehearse

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = loading.build_model(loading.load_object(spec), spec)
        source = batches.make_batch_source(None, kw.get("input_shape"), model, 0)
        traj, _ = rehearse(model, source, losses.resolve(kw.get("loss")), seed=0, device=torch.device("cpu"),
                           train=TrainSettings(steps=kw["train_steps"], optimizer=kw["optimizer"], lr=kw.get("lr")))
    return traj


if __name__ == "__main__":
    sys.exit(main())
