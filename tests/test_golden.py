"""Golden-output tests for the terminal and JSON reports.

The statistics are built by hand (no torch, no timing), so the output is byte-for-byte stable across
machines. After an intended change to a renderer or a rule message, regenerate and review the diff:

    GRADCHECK_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from gradcheck_cli import stats as S
from gradcheck_cli.findings import FailOn
from gradcheck_cli.pipeline import apply_rules, make_report
from gradcheck_cli.report import render

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("GRADCHECK_UPDATE_GOLDEN") == "1"


def broken_stats() -> S.RunStats:
    """A 5-layer sigmoid MLP that vanishes, saturates at the end, with an unused head."""
    layers = []
    g = 1e-8
    for i in range(5):
        layers.append(S.LayerStats(index=2 * i, name=f"net.{2 * i}", type="Linear", role=S.PARAM, params=4160,
                                   trainable_params=4160, calls=1, weight_norm=4.6, weight_rms=0.072, fan_in=64,
                                   fan_out=64, bias_mean=0.01, grad_norm=g * 2.1,
                                   output_grad_norm=g))
        layers.append(S.LayerStats(index=2 * i + 1, name=f"net.{2 * i + 1}", type="Sigmoid", role=S.ACTIVATION,
                                   activation=S.SIGMOID, calls=1, output_grad_norm=g * 4,
                                   saturated_fraction=0.72 if i == 4 else 0.0))
        g *= 30.0
    layers.append(S.LayerStats(index=10, name="aux", type="Linear", role=S.PARAM, params=650, trainable_params=650,
                               weight_norm=1.2, weight_rms=0.07, fan_in=64, fan_out=10))
    return S.RunStats(layers=layers, steps=3, losses=[2.31, 2.29, 2.33], parameters=21450,
                      trainable_parameters=21450, total_grad_norm=0.043, total_grad_norm_max=0.05,
                      unused_parameters=["aux.weight", "aux.bias"])


def healthy_stats() -> S.RunStats:
    layers = [S.LayerStats(index=i, name=f"fc{i}", type="Linear", role=S.PARAM, params=1000, trainable_params=1000,
                           calls=1, weight_norm=3.0, weight_rms=0.09, fan_in=256, fan_out=256, grad_norm=0.2,
                           output_grad_norm=0.05 * (1.1 ** i)) for i in range(4)]
    return S.RunStats(layers=layers, steps=3, losses=[1.0, 0.9, 1.1], parameters=4000, trainable_parameters=4000,
                      total_grad_norm=0.4, total_grad_norm_max=0.45)


def build(stats: S.RunStats, spec: str):
    findings = apply_rules(stats, {})
    settings = {"steps": 3, "seed": 0, "device": "cpu", "batch": "synthetic N(0,1) 8x64",
                "input_shape": [8, 64], "loss": "cross-entropy (synthetic targets)", "fail_on": "warning",
                "config": None, "rules": {}}
    file = spec.rpartition(":")[0]
    for f in findings:   # as pipeline.check_loaded sets them from the model's source
        f.location = {"file": file, "line": 12 if f.layer == "aux" else 9}
    report = make_report(stats, findings, spec=spec, model_class="Net", settings=settings,
                         fail_on=FailOn.WARNING, timings={"load_s": 0.5, "passes_s": 0.25, "analysis_s": 0.01,
                                                          "total_s": 0.76})
    report.model["source"] = {"file": file, "line": 5}
    return report


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden file {path}; run with GRADCHECK_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs; regenerate if intended"


@pytest.mark.parametrize("case,stats_fn", [("broken", broken_stats), ("healthy", healthy_stats)])
def test_text_golden(case, stats_fn):
    out = io.StringIO()
    render(build(stats_fn(), f"model_{case}.py:build"), "text", out, color=False, width=80)
    text = out.getvalue()
    assert "\x1b[" not in text                     # no colour codes when not a terminal
    assert max(len(line) for line in text.splitlines()) <= 80
    check_golden(f"{case}.txt", text)


@pytest.mark.parametrize("case,stats_fn", [("broken", broken_stats), ("healthy", healthy_stats)])
def test_json_golden(case, stats_fn):
    out = io.StringIO()
    render(build(stats_fn(), f"model_{case}.py:build"), "json", out)
    doc = json.loads(out.getvalue())
    assert doc["schema_version"] == 1
    check_golden(f"{case}.json", out.getvalue())


@pytest.mark.parametrize("fmt,suffix", [("sarif", "sarif"), ("junit", "junit.xml"), ("markdown", "md")])
@pytest.mark.parametrize("case,stats_fn", [("broken", broken_stats), ("healthy", healthy_stats)])
def test_ci_format_goldens(case, stats_fn, fmt, suffix):
    out = io.StringIO()
    render(build(stats_fn(), f"model_{case}.py:build"), fmt, out)
    check_golden(f"{case}.{suffix}", out.getvalue())


def test_broken_golden_has_each_expected_finding():
    report = build(broken_stats(), "m.py:build")
    rules = {f.rule for f in report.findings}
    assert {"vanishing-gradients", "saturated-activations", "unused-parameters"} <= rules
    assert report.exit_code == 1
    assert build(healthy_stats(), "m.py:build").exit_code == 0


def verified_report():
    """The broken report as --verify-fixes leaves it (entries written by hand: the renderers' input only).
    A module name with markup and a pipe checks the escaping of the change in every format."""
    report = build(broken_stats(), "model_broken.py:build")
    for f in report.findings:
        if f.rule == "vanishing-gradients":
            f.verification = [
                {"fix": 0, "change": "5 modules (net.1, net.3, net.5 and 2 more) nn.Sigmoid -> nn.ReLU; "
                                     "kaiming_normal_(nonlinearity='relu') on the weights of 4 modules",
                 "resolved": True, "metric": "early_late_ratio", "before": 1.23e-6, "after": 0.84,
                 "new_findings": []}] + [
                {"fix": i, "change": None, "reason": "changes the architecture (new layers): a code change "
                                                     "gradcheck does not make"} for i in range(1, len(f.fixes))]
        elif f.rule == "saturated-activations":
            f.verification = [
                {"fix": 0, "change": "xavier_normal_ on the weights of 1 module (net.<b>|8</b>)", "resolved": False,
                 "metric": "saturated_fraction", "before": 0.72, "after": 0.61, "new_findings": ["initial-loss"]}] + [
                {"fix": i, "change": None, "reason": "changes the input data, outside the model"}
                for i in range(1, len(f.fixes))]
    report.timings["verify_s"] = 1.25
    report.run["verification"] = {"mode": "failing", "findings": 2, "runs": 2, "seconds": 1.25}
    return report


@pytest.mark.parametrize("fmt,name", [("text", "broken-verified.txt"), ("json", "broken-verified.json"),
                                      ("markdown", "broken-verified.md"), ("sarif", "broken-verified.sarif"),
                                      ("junit", "broken-verified.junit.xml")])
def test_verified_fixes_goldens(fmt, name):
    out = io.StringIO()
    render(verified_report(), fmt, out, **({"color": False, "width": 80} if fmt == "text" else {}))
    text = out.getvalue()
    if fmt == "text":
        assert "✓ verified: early/late |dL/dy| 1.23e-06 -> 0.84" in text
        assert "✗ not resolved: saturated 72% -> 61%; new: initial-loss" in text
        assert max(len(line) for line in text.splitlines()) <= 80
    if fmt == "markdown":
        assert "<b>" not in text and "net.&lt;b&gt;\\|8&lt;/b&gt;" in text
    if fmt == "junit":
        assert "<b>" not in text
    check_golden(name, text)


def test_verified_fixes_in_html_are_escaped():
    out = io.StringIO()
    render(verified_report(), "html", out)
    html = out.getvalue()
    assert 'class="verification ok"' in html and 'class="verification bad"' in html
    assert "net.&lt;b&gt;|8&lt;/b&gt;" in html and "<b>|8" not in html
