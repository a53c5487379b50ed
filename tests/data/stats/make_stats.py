"""Regenerate the measured statistics the golden text/HTML tests render (no torch in those tests):

    python tests/data/stats/make_stats.py

Each JSON file holds RunStats.to_dict() of a real run (`gradcheck check` on the model named below, 3 steps,
seed 0, CPU), so the goldens show real layer names and real numbers. Re-run after a change to measurement.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

MODELS = {
    # name: (spec, input shape or None)
    "gpt2": ("examples/hf_gpt2.py:build", None),
    "rnn": ("examples/rnn_vanishing.py:Net", (8, 100, 16)),
    "mlp100": ("tests/data/stats/deep_mlp.py:build", None),
    "tanh": ("examples/saturated_tanh.py:build", None),
}


def main(names: list[str]) -> None:
    from gradcheck_cli import config as cfg
    from gradcheck_cli.pipeline import run_check
    from gradcheck_cli.stats import RunStats

    for name in names or list(MODELS):
        spec, shape = MODELS[name]
        s = cfg.resolve({"model": str(ROOT / spec), "input_shape": shape, "device": "cpu"}, None, cwd=ROOT)
        report = run_check(s)
        stats = RunStats.from_dict({**report.run, "layers": report.layers})
        doc = {"spec": spec, "class": report.model["class"], "batch": report.settings["batch"],
               "loss": report.settings["loss"], "input_shape": report.settings["input_shape"],
               "stats": stats.to_dict()}
        (HERE / f"{name}.json").write_text(json.dumps(doc, indent=1, allow_nan=True) + "\n", encoding="utf-8")
        print(name, len(stats.layers), "layers")


if __name__ == "__main__":
    main(sys.argv[1:])
