"""Reports of real models without torch: the statistics measured once by tests/data/stats/make_stats.py
(GPT-2 small config, a vanilla RNN over 100 steps, a 100-layer tanh MLP, a saturated tanh MLP), the rules
applied now, fixed timings. Golden text and HTML outputs and the browser checks render these."""
from __future__ import annotations

import io
import json
from dataclasses import fields
from pathlib import Path

from gradcheck_cli.findings import FailOn, Report
from gradcheck_cli.pipeline import apply_rules, make_report
from gradcheck_cli.report import render
from gradcheck_cli.stats import LayerStats, RunStats

STATS = Path(__file__).parent / "data" / "stats"
MODELS = ("gpt2", "rnn", "mlp100", "tanh")


def _known_fields(d: dict) -> dict:
    """Measurement fields added or dropped since the fixture was written are left out (regenerate it to get
    them: tests/data/stats/make_stats.py)."""
    run_fields = {f.name for f in fields(RunStats)}
    layer_fields = {f.name for f in fields(LayerStats)} | {"dead_fraction"}
    out = {k: v for k, v in d.items() if k in run_fields}
    out["layers"] = [{k: v for k, v in lv.items() if k in layer_fields} for lv in d["layers"]]
    return out


def report_of(name: str) -> Report:
    doc = json.loads((STATS / f"{name}.json").read_text(encoding="utf-8"))
    stats = RunStats.from_dict(_known_fields(doc["stats"]))
    settings = {"steps": stats.steps, "seed": 0, "device": "cpu", "batch": doc["batch"],
                "input_shape": doc["input_shape"], "loss": doc["loss"], "fail_on": "warning", "config": None,
                "rules": {}}
    return make_report(stats, apply_rules(stats, {}), spec=doc["spec"], model_class=doc["class"], settings=settings,
                       fail_on=FailOn.WARNING, timings={"load_s": 0.5, "passes_s": 1.25, "analysis_s": 0.01,
                                                        "total_s": 1.76})


def text_of(name: str, width: int | None, max_rows: int = 40) -> str:
    out = io.StringIO()
    render(report_of(name), "text", out, color=False, width=width, max_rows=max_rows)
    return out.getvalue()


def html_of(name: str) -> str:
    out = io.StringIO()
    render(report_of(name), "html", out)
    return out.getvalue()
