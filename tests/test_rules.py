"""Unit tests of every rule on hand-built RunStats / LayerStats (no torch)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from gradcheck_cli import stats as S
from gradcheck_cli.config import RuleSettings
from gradcheck_cli.findings import Finding, Severity, _json_safe
from gradcheck_cli.pipeline import apply_rules
from gradcheck_cli.rules import RULES, SECTIONS, get_rule
from gradcheck_cli.stats import LayerStats, RunStats

VANISHING = get_rule("vanishing-gradients")
EXPLODING = get_rule("exploding-gradients")
NONFINITE = get_rule("non-finite")
SATURATED = get_rule("saturated-activations")
DEAD = get_rule("dead-relus")
UNUSED = get_rule("unused-parameters")


# --------------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------------

def lin(index: int, name: str, **kw) -> LayerStats:
    kw.setdefault("type", "Linear")
    kw.setdefault("role", S.PARAM)
    return LayerStats(index=index, name=name, **kw)


def act(index: int, name: str, activation: str, **kw) -> LayerStats:
    kw.setdefault("type", {S.SIGMOID: "Sigmoid", S.TANH: "Tanh", S.RELU: "ReLU"}.get(activation, "GELU"))
    kw.setdefault("role", S.ACTIVATION)
    return LayerStats(index=index, name=name, activation=activation, **kw)


def run(layers, **kw) -> RunStats:
    kw.setdefault("steps", 3)
    kw.setdefault("losses", [1.0] * kw["steps"])
    return RunStats(layers=layers, **kw)


def depth_stats(early: float, n: int = 8, activation: str | None = None) -> RunStats:
    """n Linear layers whose error signal |dL/dy| is `early` over the first quarter and 1.0 elsewhere.

    The rules compare the geometric median of the first quarter with that of the last quarter, so the
    early/late ratio of this profile is exactly `early` (computed independently of the rule's code).
    """
    k = max(1, n // 4)
    layers = []
    for i in range(n):
        layers.append(lin(2 * i, f"layers.{2 * i}", output_grad_norm=early if i < k else 1.0,
                          grad_norm=0.1, weight_norm=1.0, fan_in=64, fan_out=64, weight_rms=0.1))
        if activation is not None and i < n - 1:
            layers.append(act(2 * i + 1, f"layers.{2 * i + 1}", activation, output_grad_norm=1.0))
    return run(layers, total_grad_norm=1.0)


def rnn_stats(cell: str, first_last: float | None, *, time_steps: int = 100, bidirectional: bool = False,
              min_max: float | None = None) -> RunStats:
    rnn = lin(0, "rnn", type=cell, recurrent=cell, time_steps=time_steps, bidirectional=bidirectional,
              time_grad_first_last=first_last, time_grad_min_max=min_max if min_max is not None else first_last,
              time_grad_profile=[1.0] * min(time_steps, 64), output_grad_norm=0.2, grad_norm=0.5,
              recurrent_sigma_max=0.9 if cell == "RNN" else None)
    head = lin(1, "head", output_grad_norm=0.3, grad_norm=0.3)
    return run([rnn, head], total_grad_norm=0.6)


def flat_values(obj) -> list:
    """Every scalar inside an evidence dict (nested dicts/lists included)."""
    out = []
    if isinstance(obj, dict):
        for v in obj.values():
            out += flat_values(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out += flat_values(v)
    else:
        out.append(obj)
    return out


def assert_well_formed(f: Finding, rule, severity: Severity, layer) -> None:
    assert isinstance(f, Finding)
    assert f.rule == rule.id
    assert f.code == rule.code
    assert f.severity is severity
    assert f.layer == layer
    assert isinstance(f.message, str) and f.message.strip() and "\n" not in f.message
    assert isinstance(f.evidence, dict) and f.evidence
    assert f.fixes and all(isinstance(x, str) and x.strip() for x in f.fixes)
    # Findings end up in the JSON report: they must serialise strictly.
    json.dumps(_json_safe(f.to_dict()), allow_nan=False)


# --------------------------------------------------------------------------------------------------------
# Registry and documentation
# --------------------------------------------------------------------------------------------------------

def test_registry_has_the_rules_with_unique_ids_and_codes():
    ids = [r.id for r in RULES]
    codes = [r.code for r in RULES]
    assert set(ids) == {"vanishing-gradients", "exploding-gradients", "non-finite", "saturated-activations",
                        "dead-relus", "unused-parameters", "initial-loss", "loss-divergence", "update-ratio"}
    assert len(set(ids)) == len(ids) == 9
    assert len(set(codes)) == len(codes) == 9
    assert codes == sorted(codes), "RULES is documented to be in code order"


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_rule_metadata_and_docstring_sections(rule):
    assert re.fullmatch(r"[a-z]+(-[a-z]+)*", rule.id), rule.id
    assert re.fullmatch(r"GC\d{3}", rule.code), rule.code
    assert isinstance(rule.severity, Severity)
    summary = rule.summary
    assert summary and "\n" not in summary and len(summary) < 120
    sections = rule.sections()
    for title in SECTIONS:
        assert title in sections, f"{rule.id}: missing docstring section {title!r}"
        assert sections[title].strip(), f"{rule.id}: empty docstring section {title!r}"
    assert list(sections) == list(SECTIONS), "sections in the documented order"
    names = [o.name for o in rule.options]
    assert len(names) == len(set(names))
    for o in rule.options:
        assert o.help.strip()
        assert o.coerce(o.default) == o.default


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_get_rule_by_id_and_code_case_insensitive(rule):
    assert get_rule(rule.id) is rule
    assert get_rule(rule.code) is rule
    assert get_rule(rule.code.lower()) is rule
    assert get_rule(f"  {rule.id.upper()} ") is rule


def test_get_rule_unknown_is_none():
    assert get_rule("dead-relu") is None
    assert get_rule("GC999") is None


def test_rules_and_config_do_not_import_torch():
    code = (
        "import sys\n"
        "from gradcheck_cli.rules import RULES\n"
        "from gradcheck_cli import config, findings, stats, pipeline\n"
        "s = stats.RunStats(layers=[], steps=1, losses=[float('nan')], input_nonfinite=1)\n"
        "fs = pipeline.apply_rules(s, {})\n"
        "assert fs and fs[0].rule == 'non-finite', fs\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_healthy_stats_give_no_findings():
    stats = depth_stats(0.5, activation=S.RELU)
    for layer in stats.layers:
        if layer.activation == S.RELU:
            layer.units, layer.dead_units = 64, 3
    assert apply_rules(stats, {}) == []


# --------------------------------------------------------------------------------------------------------
# vanishing-gradients (GC101)
# --------------------------------------------------------------------------------------------------------

def test_vanishing_warning_below_ratio():
    (f,) = VANISHING.check(depth_stats(1e-4, activation=S.SIGMOID))
    assert_well_formed(f, VANISHING, Severity.WARNING, "layers.0")
    assert f.evidence["early_late_ratio"] == pytest.approx(1e-4, rel=1e-9)
    assert f.evidence["threshold"] == 1e-3
    assert "1.00e-04" in f.message
    # The sigmoid stack is named in the first fix.
    assert "Sigmoid" in f.fixes[0]


def test_vanishing_error_below_error_ratio():
    (f,) = VANISHING.check(depth_stats(1e-7))
    assert_well_formed(f, VANISHING, Severity.ERROR, "layers.0")
    assert f.evidence["early_late_ratio"] == pytest.approx(1e-7, rel=1e-9)
    assert f.evidence["error_threshold"] == 1e-6


@pytest.mark.parametrize("early", [1e-2, 0.5, 1.0, 1.001e-3])
def test_vanishing_silent_above_ratio(early):
    assert VANISHING.check(depth_stats(early)) == []


def test_vanishing_boundary_just_below():
    (f,) = VANISHING.check(depth_stats(0.999e-3))
    assert f.severity is Severity.WARNING


def test_vanishing_options_override_thresholds():
    stats = depth_stats(1e-2)
    assert VANISHING.check(stats) == []
    (f,) = VANISHING.check(stats, {"ratio": 0.1})
    assert f.evidence["threshold"] == 0.1 and f.severity is Severity.WARNING
    (f,) = VANISHING.check(stats, {"ratio": 0.1, "error_ratio": 0.05})
    assert f.severity is Severity.ERROR


def test_vanishing_needs_min_layers():
    stats = depth_stats(1e-5, n=2)
    assert VANISHING.check(stats) == []
    (f,) = VANISHING.check(stats, {"min_layers": 2})
    assert f.evidence["early_late_ratio"] == pytest.approx(1e-5)


def test_vanishing_ignores_layers_without_a_positive_finite_gradient():
    # A layer whose output gradient is exactly 0 or NaN is not part of the depth profile (dead-relus /
    # non-finite report those); otherwise the ratio would be 0 or NaN.
    stats = depth_stats(1.0)
    stats.layers[0].output_grad_norm = 0.0
    stats.layers[1].output_grad_norm = float("nan")
    assert VANISHING.check(stats) == []


def test_vanishing_through_time_rnn_is_a_warning():
    (f,) = VANISHING.check(rnn_stats("RNN", 1e-5))
    assert_well_formed(f, VANISHING, Severity.WARNING, "rnn")
    assert f.evidence["time_grad_ratio"] == 1e-5
    assert f.evidence["threshold"] == 1e-3
    assert f.evidence["time_steps"] == 100
    assert any("LSTM" in fix for fix in f.fixes)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_vanishing_through_time_gated_cell_is_info(cell):
    (f,) = VANISHING.check(rnn_stats(cell, 1e-5))
    assert_well_formed(f, VANISHING, Severity.INFO, "rnn")
    assert f.evidence["cell"] == cell


def test_vanishing_through_time_respects_min_time_steps():
    stats = rnn_stats("RNN", 1e-5, time_steps=8)
    assert VANISHING.check(stats) == []
    (f,) = VANISHING.check(stats, {"min_time_steps": 8})
    assert f.evidence["time_steps"] == 8


def test_vanishing_through_time_silent_above_time_ratio():
    assert VANISHING.check(rnn_stats("RNN", 0.05)) == []
    (f,) = VANISHING.check(rnn_stats("RNN", 0.05), {"time_ratio": 0.1})
    assert f.evidence["threshold"] == 0.1


def test_vanishing_through_time_bidirectional_uses_min_max():
    # Bidirectional: earliest/latest means nothing (each direction has its own end), min/max is judged.
    assert VANISHING.check(rnn_stats("RNN", 1e-6, bidirectional=True, min_max=0.2)) == []
    (f,) = VANISHING.check(rnn_stats("RNN", 0.9, bidirectional=True, min_max=1e-6))
    assert f.evidence["time_grad_ratio"] == 1e-6


# --------------------------------------------------------------------------------------------------------
# exploding-gradients (GC102)
# --------------------------------------------------------------------------------------------------------

def test_exploding_depth_warning():
    (f,) = EXPLODING.check(depth_stats(1e4, activation=S.RELU))
    assert_well_formed(f, EXPLODING, Severity.WARNING, "layers.0")
    assert f.evidence["early_late_ratio"] == pytest.approx(1e4, rel=1e-9)
    assert f.evidence["threshold"] == 1e3
    assert any("clip_grad_norm_" in fix for fix in f.fixes)


def test_exploding_depth_error():
    (f,) = EXPLODING.check(depth_stats(1e7))
    assert f.severity is Severity.ERROR
    assert f.evidence["error_threshold"] == 1e6


@pytest.mark.parametrize("early", [1.0, 10.0, 999.0])
def test_exploding_silent_below_ratio(early):
    assert EXPLODING.check(depth_stats(early)) == []


def test_exploding_depth_option_override():
    assert EXPLODING.check(depth_stats(100.0)) == []
    (f,) = EXPLODING.check(depth_stats(100.0), {"ratio": 10.0})
    assert f.evidence["threshold"] == 10.0


def test_exploding_oversized_weights_named_in_fix():
    stats = depth_stats(1e4, activation=S.RELU)
    big = stats.layers[0]
    big.weight_rms = 1.0          # He std for fan_in 64 is 0.177: 5.7x
    (f,) = EXPLODING.check(stats)
    assert "layers.0" in f.evidence.get("oversized_weights", {})
    assert any("kaiming_normal_" in fix and "layers.0" in fix for fix in f.fixes)


def test_exploding_global_grad_norm_alone_is_context():
    """A large absolute norm with a flat depth profile and weights at their init scale (a stock
    MobileNetV2 with BatchNorm: 1.2e3) is evidence, not explosion: info."""
    layers = [lin(0, "a", output_grad_norm=1.0, grad_norm=10.0), lin(1, "b", output_grad_norm=1.0, grad_norm=4000.0)]
    stats = run(layers, total_grad_norm=4000.01, total_grad_norm_max=5000.0)
    (f,) = EXPLODING.check(stats)
    assert_well_formed(f, EXPLODING, Severity.INFO, "b")
    assert f.evidence["total_grad_norm"] == 4000.01
    assert f.evidence["threshold"] == 1e3
    assert "4e+03" in f.message.replace("4.00e+03", "4e+03")
    assert "not explosion" in f.message


def test_exploding_global_grad_norm_with_oversized_weights_is_a_warning():
    """The same norm with weights 3x their He std and an error signal growing towards the input."""
    layers = [lin(0, "a", output_grad_norm=2.0, grad_norm=10.0, fan_in=64, fan_out=64, weight_rms=0.53),
              act(1, "r", S.RELU),
              lin(2, "b", output_grad_norm=1.0, grad_norm=4000.0, fan_in=64, fan_out=64, weight_rms=0.53)]
    stats = run(layers, total_grad_norm=4000.01)
    (f,) = EXPLODING.check(stats)
    assert_well_formed(f, EXPLODING, Severity.WARNING, "b")
    assert f.evidence["supported_by"] == "oversized weights"
    assert set(f.evidence["oversized_weights"]) == {"a", "b"}


def test_exploding_overflowing_layer_is_named_as_largest():
    layers = [lin(0, "a", output_grad_norm=1.0, grad_norm=5.0), lin(1, "b", output_grad_norm=1.0, grad_norm=float("inf"))]
    (f,) = EXPLODING.check(run(layers, total_grad_norm=float("inf")))
    assert f.layer == "b" and f.evidence["largest_layer"] == "b"
    assert f.severity is Severity.WARNING


def test_exploding_global_grad_norm_threshold_and_option():
    layers = [lin(0, "a", output_grad_norm=1.0, grad_norm=500.0)]
    stats = run(layers, total_grad_norm=500.0)
    assert EXPLODING.check(stats) == []
    (f,) = EXPLODING.check(stats, {"max_grad_norm": 100.0})
    assert f.evidence["threshold"] == 100.0


def test_exploding_global_grad_norm_ignores_nonfinite():
    # A NaN global norm, or an inf one with NaN/Inf found by the exact check, belongs to the non-finite rule.
    layers = [lin(0, "a", output_grad_norm=1.0, grad_norm=float("nan"), nonfinite_param_grads=1)]
    assert EXPLODING.check(run(layers, total_grad_norm=float("nan"))) == []
    assert EXPLODING.check(run(layers, total_grad_norm=float("inf"))) == []


def test_exploding_global_grad_norm_overflow_without_nonfinite_values():
    # An inf norm where the exact check found no NaN/Inf: the sum of squares overflowed float32.
    layers = [lin(0, "a", output_grad_norm=1.0, grad_norm=float("inf"))]
    (f,) = EXPLODING.check(run(layers, total_grad_norm=float("inf")))
    assert "overflows float32" in f.message


def test_exploding_through_time_rnn():
    (f,) = EXPLODING.check(rnn_stats("RNN", 2e5))
    assert_well_formed(f, EXPLODING, Severity.WARNING, "rnn")
    assert f.evidence["time_grad_ratio"] == 2e5
    assert f.evidence["threshold"] == 1e3
    assert any("LSTM" in fix for fix in f.fixes)


def test_exploding_through_time_limits():
    assert EXPLODING.check(rnn_stats("RNN", 500.0)) == []
    assert EXPLODING.check(rnn_stats("RNN", 2e5, time_steps=5)) == []
    assert EXPLODING.check(rnn_stats("RNN", 2e5, bidirectional=True)) == []
    (f,) = EXPLODING.check(rnn_stats("RNN", 500.0), {"time_ratio": 100.0})
    assert f.evidence["threshold"] == 100.0
    (f,) = EXPLODING.check(rnn_stats("RNN", 2e5, time_steps=5), {"min_time_steps": 5})
    assert f.evidence["time_steps"] == 5


# --------------------------------------------------------------------------------------------------------
# non-finite (GC103)
# --------------------------------------------------------------------------------------------------------

def test_nonfinite_all_finite_is_silent():
    assert NONFINITE.check(depth_stats(1.0)) == []


def test_nonfinite_nan_loss_with_forward_origin_in_a_layer():
    layers = [lin(0, "fc1", nonfinite_outputs=3, nonfinite_param_grads=2),
              act(1, "act", S.RELU, nonfinite_outputs=3), lin(2, "fc2", nonfinite_outputs=3)]
    stats = run(layers, steps=2, losses=[float("nan"), float("nan")], first_nonfinite_forward="fc1")
    (f,) = NONFINITE.check(stats)
    assert_well_formed(f, NONFINITE, Severity.ERROR, "fc1")
    assert "`fc1`" in f.message and "Linear" in f.message
    assert "2 of 2" in f.message and "NaN" in f.message
    assert f.evidence["first_nonfinite_forward"] == "fc1"
    assert f.evidence["nonfinite_loss_steps"] == 2
    assert 3 in flat_values(f.evidence)            # the measured count
    assert "fc1" in f.evidence["layers_with_nonfinite_param_grads"]


def _op(op: str, module: str, line: int, fwd: int = 0, bwd: int = 0) -> dict:
    return {"op": op, "file": "mymodel.py", "line": line, "module": module,
            "label": f"{op}() at mymodel.py:{line} in `{module}`", "forward_nonfinite": fwd,
            "backward_nonfinite": bwd}


def test_nonfinite_forward_origin_in_an_op():
    op = _op("log", "head", 12, fwd=5)
    layers = [lin(0, "body", nonfinite_param_grads=1), lin(1, "head")]
    stats = run(layers, steps=3, losses=[float("inf")] * 3, first_nonfinite_forward=op["label"], nonfinite_ops=[op])
    (f,) = NONFINITE.check(stats)
    assert_well_formed(f, NONFINITE, Severity.ERROR, "head")
    assert "inf" in f.message and "3 of 3" in f.message and op["label"] in f.message
    assert f.evidence["op"] == "log"
    assert f.evidence["line"] == 12
    assert f.evidence["file"] == "mymodel.py"
    assert 5 in flat_values(f.evidence)
    assert "mymodel.py:12" in f.fixes[0] and "log_softmax" in f.fixes[0]


def test_nonfinite_op_in_the_model_itself_has_no_layer():
    op = _op("exp", "(model)", 7, fwd=1)
    stats = run([lin(0, "fc")], losses=[float("inf")] * 3, first_nonfinite_forward=op["label"], nonfinite_ops=[op])
    (f,) = NONFINITE.check(stats)
    assert f.layer is None
    assert "clamp" in f.fixes[0]


def test_nonfinite_forward_nan_masked_from_loss():
    stats = run([lin(0, "fc", nonfinite_outputs=1)], losses=[0.5] * 3, first_nonfinite_forward="fc")
    (f,) = NONFINITE.check(stats)
    assert f.layer == "fc" and "forward" in f.message


def test_nonfinite_backward_only_origin_in_op():
    op = _op("sqrt", "(model)", 22, bwd=6)
    layers = [lin(0, "encoder", nonfinite_output_grads=3, nonfinite_param_grads=1), lin(1, "head")]
    stats = run(layers, losses=[1.3, 1.4, 1.5], first_nonfinite_backward=op["label"], nonfinite_ops=[op])
    (f,) = NONFINITE.check(stats)
    assert_well_formed(f, NONFINITE, Severity.ERROR, "encoder")
    assert "backward" in f.message and "`encoder`" in f.message
    assert f.evidence["first_nonfinite_backward"] == op["label"]
    assert f.evidence["op"] == "sqrt"
    assert f.evidence["layers_with_nonfinite_param_grads"] == ["encoder"]
    assert "sqrt" in f.fixes[0] and "mymodel.py:22" in f.fixes[0]
    assert any("detect_anomaly" in fix for fix in f.fixes)


def test_nonfinite_backward_only_origin_in_layer():
    layers = [lin(0, "encoder", nonfinite_output_grads=2, nonfinite_param_grads=1), lin(1, "head")]
    stats = run(layers, first_nonfinite_backward="encoder")
    (f,) = NONFINITE.check(stats)
    assert f.layer == "encoder" and f.evidence["first_nonfinite_backward"] == "encoder"
    assert 2 in flat_values(f.evidence)


def test_nonfinite_param_grads_only():
    stats = run([lin(0, "a"), lin(1, "b", nonfinite_param_grads=2)])
    (f,) = NONFINITE.check(stats)
    assert f.layer == "b"


def test_nonfinite_nan_input():
    stats = run([lin(0, "fc")], input_nonfinite=4)
    (f,) = NONFINITE.check(stats)
    assert_well_formed(f, NONFINITE, Severity.ERROR, None)
    assert "input" in f.message and "4" in f.message
    assert 4 in flat_values(f.evidence)


def test_nonfinite_nan_input_and_nan_loss_give_two_findings():
    stats = run([lin(0, "fc", nonfinite_outputs=3)], losses=[float("nan")] * 3, input_nonfinite=3,
                first_nonfinite_forward="fc")
    found = NONFINITE.check(stats)
    assert len(found) == 2
    assert {f.layer for f in found} == {None, "fc"}


def test_nonfinite_loss_without_layer_origin_blames_the_loss():
    stats = run([lin(0, "fc")], losses=[1.0, float("nan"), 2.0])
    (f,) = NONFINITE.check(stats)
    assert "1 of 3" in f.message and "loss" in f.message
    assert f.evidence["nonfinite_loss_steps"] == 1


# --------------------------------------------------------------------------------------------------------
# saturated-activations (GC104)
# --------------------------------------------------------------------------------------------------------

def sat_stats(fraction: float, kind: str = S.SIGMOID, feeding_rms: float = 0.05) -> RunStats:
    layers = [lin(0, "fc1", weight_rms=feeding_rms, fan_in=256, fan_out=256),
              act(1, "act1", kind, saturated_fraction=fraction),
              lin(2, "fc2", weight_rms=0.05, fan_in=256, fan_out=10)]
    return run(layers)


@pytest.mark.parametrize("kind", [S.SIGMOID, S.TANH])
def test_saturated_fires_at_threshold(kind):
    (f,) = SATURATED.check(sat_stats(0.6, kind))
    assert_well_formed(f, SATURATED, Severity.WARNING, "act1")
    assert f.evidence["saturated_fraction"] == {"act1": 0.6}
    assert f.evidence["threshold"] == 0.5
    assert "60%" in f.message and "50%" in f.message
    (f,) = SATURATED.check(sat_stats(0.5, kind))       # "at least" the fraction
    assert f.layer == "act1"


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.49])
def test_saturated_silent_below_threshold(fraction):
    assert SATURATED.check(sat_stats(fraction)) == []


def test_saturated_option_override():
    assert SATURATED.check(sat_stats(0.4)) == []
    (f,) = SATURATED.check(sat_stats(0.4), {"fraction": 0.3})
    assert f.evidence["threshold"] == 0.3
    assert SATURATED.check(sat_stats(0.9), {"fraction": 0.95}) == []


def test_saturated_names_oversized_feeding_layer():
    # Xavier std at 256x256 is 0.0625; std 1.0 is 16x.
    (f,) = SATURATED.check(sat_stats(0.95, S.TANH, feeding_rms=1.0))
    assert f.evidence["feeding_weight_std_over_xavier"]["fc1"] == pytest.approx(16.0)
    assert "xavier_normal_" in f.fixes[0] and "`fc1`" in f.fixes[0] and "'tanh'" in f.fixes[0]


def test_saturated_functional_call_and_other_activations():
    layers = [lin(0, "fc"), LayerStats(index=1, name="(model).sigmoid@12", type="sigmoid()", role=S.FUNCTIONAL,
                                      activation=S.SIGMOID, saturated_fraction=0.8),
              act(2, "gelu", S.OTHER_ACT, saturated_fraction=0.99)]
    (f,) = SATURATED.check(run(layers))
    assert f.layer == "(model).sigmoid@12"
    assert list(f.evidence["saturated_fraction"]) == ["(model).sigmoid@12"]


# --------------------------------------------------------------------------------------------------------
# dead-relus (GC105)
# --------------------------------------------------------------------------------------------------------

def dead_stats(dead: int, units: int = 20, bias: float | None = 0.0) -> RunStats:
    layers = [lin(0, "fc1", bias_mean=bias, weight_rms=0.1, fan_in=16, fan_out=units),
              act(1, "relu1", S.RELU, units=units, dead_units=dead), lin(2, "fc2", weight_rms=0.1)]
    return run(layers)


def test_dead_relus_fires_at_half():
    (f,) = DEAD.check(dead_stats(12))
    assert_well_formed(f, DEAD, Severity.WARNING, "relu1")
    assert f.evidence["threshold"] == 0.5
    assert f.evidence["dead_units"] == {"relu1": {"dead": 12, "units": 20}}
    assert "12 of 20" in f.message and "60%" in f.message
    assert "LeakyReLU" in f.fixes[0]
    (f,) = DEAD.check(dead_stats(10))
    assert f.evidence["dead_units"]["relu1"]["dead"] == 10


@pytest.mark.parametrize("dead", [0, 1, 9])
def test_dead_relus_silent_below_half(dead):
    assert DEAD.check(dead_stats(dead)) == []


def test_dead_relus_min_units():
    """Partly dead tiny layers (squeeze-excite bottlenecks of 4-8 units, seen on a few pooled examples) are
    not judged; a fully dead one that cuts the gradient is (see the no-learning-signal tests)."""
    assert DEAD.check(dead_stats(2, units=4)) == []
    assert DEAD.check(dead_stats(10, units=15)) == []
    (f,) = DEAD.check(dead_stats(3, units=3), {"min_units": 3})
    assert f.evidence["dead_units"]["relu1"] == {"dead": 3, "units": 3}
    (f,) = DEAD.check(dead_stats(8, units=16))          # min_units is inclusive
    assert f.layer == "relu1"


def test_dead_relus_option_fraction():
    assert DEAD.check(dead_stats(12), {"fraction": 0.9}) == []
    (f,) = DEAD.check(dead_stats(4), {"fraction": 0.2})
    assert f.evidence["threshold"] == 0.2


def test_dead_relus_negative_feeding_bias_is_reported():
    (f,) = DEAD.check(dead_stats(20, bias=-3.0))
    assert f.evidence["feeding_bias_mean"] == {"fc1": -3.0}
    assert any("`fc1.bias`" in fix and "-3" in fix for fix in f.fixes)


def deep_relu_stats(off: int, dead: int, units: int = 32, depth: int = 10, coherence: float | None = 0.9,
                    margin: float | None = -0.4, bias: float = 0.0) -> RunStats:
    """A plain stack of `depth` Linear+ReLU pairs; the last ReLU has `off` units off, `dead` of them dead."""
    layers = []
    for i in range(depth):
        layers.append(lin(2 * i, f"fc{i}", bias_mean=bias, weight_rms=0.1, fan_in=units, fan_out=units))
        last = i == depth - 1
        layers.append(act(2 * i + 1, f"relu{i}", S.RELU, units=units, off_units=off if last else 0,
                          dead_units=dead if last else 0, coherence=coherence if last else 0.1,
                          off_margin_median=margin if last and off else None, unit_samples=24))
    layers.append(lin(2 * depth, "head", weight_rms=0.1))
    return run(layers)


def test_dead_relus_collapse_is_info_never_dead():
    """Half the units of a deep layer off on every example, near zero, examples' vectors nearly parallel:
    correlation collapse, reported as info with residual/normalisation fixes, never as dead."""
    (f,) = DEAD.check(deep_relu_stats(off=18, dead=1))
    assert_well_formed(f, DEAD, Severity.INFO, "relu9")
    assert "correlation collapse, not death" in f.message and "not dead" in f.message
    assert "18 of 32" in f.message and "coherence 0.90" in f.message and "-0.4" in f.message
    assert f.evidence["off_units"] == {"relu9": {"off": 18, "units": 32}}
    assert f.evidence["dead_units"] == {"relu9": {"dead": 1, "units": 32}}
    assert f.evidence["coherence"] == {"relu9": 0.9} and f.evidence["off_margin_median"] == {"relu9": -0.4}
    assert any("residual" in x for x in f.fixes) and any("BatchNorm" in x for x in f.fixes)
    assert not any("LeakyReLU" in x for x in f.fixes), "nothing is dead: no activation swap"
    assert DEAD.check(deep_relu_stats(off=15, dead=0)) == [], "below `fraction` off: silent"


def test_dead_relus_dead_units_in_a_deep_layer_still_warn():
    (f,) = DEAD.check(deep_relu_stats(off=30, dead=28, coherence=0.1, margin=-5.0, bias=-3.0))
    assert_well_formed(f, DEAD, Severity.WARNING, "relu9")
    assert f.evidence["dead_units"] == {"relu9": {"dead": 28, "units": 32}}
    assert f.evidence["off_margin_median"] == {"relu9": -5.0}
    # The negative bias is the cause: resetting it comes first (verified to resolve; LeakyReLU after it).
    assert "Reset the negative biases" in f.fixes[0] and "LeakyReLU" in f.fixes[1]


def test_dead_relus_shallow_layers_count_every_off_unit():
    """Collapse needs depth: in the first `collapse_depth` weight layers an off unit is dead (a shallow
    layer whose examples look alike is dominated by a bias or by weights a large step blew up)."""
    (f,) = DEAD.check(deep_relu_stats(off=20, dead=0, depth=2))
    assert_well_formed(f, DEAD, Severity.WARNING, "relu1")
    assert f.evidence["dead_units"] == {"relu1": {"dead": 20, "units": 32}}
    (f,) = DEAD.check(deep_relu_stats(off=20, dead=0, depth=3))   # 3 weight layers up to it: collapse can be
    assert f.severity is Severity.INFO
    (f,) = DEAD.check(deep_relu_stats(off=20, dead=0, depth=2), {"collapse_depth": 2})
    assert f.severity is Severity.INFO
    (f,) = DEAD.check(deep_relu_stats(off=20, dead=0, depth=10), {"collapse_depth": 11})
    assert f.severity is Severity.WARNING


def test_dead_relus_collapse_depth_zero_never_counts_off_units_as_dead():
    """collapse_depth 0: no layer is too shallow for collapse, not even a ReLU with no weight layer before it."""
    layers = [act(0, "relu0", S.RELU, units=32, off_units=20, dead_units=0, coherence=0.9, off_margin_median=-0.4,
                  unit_samples=24),
              lin(1, "head", weight_rms=0.1)]
    (f,) = DEAD.check(run(layers), {"collapse_depth": 0})
    assert f.severity is Severity.INFO
    (f,) = DEAD.check(run(layers))   # the default (3): a first layer counts every off unit as dead
    assert f.severity is Severity.WARNING


def test_dead_relus_tiny_layers_count_only_far_below_zero():
    """Squeeze-excite bottlenecks of 4 units: off near zero is nothing; far below zero (a bias of -20) is dead."""
    assert DEAD.check(deep_relu_stats(off=3, dead=3, units=4, margin=-0.9)) == []
    (f,) = DEAD.check(deep_relu_stats(off=4, dead=4, units=4, margin=-120.0))
    assert_well_formed(f, DEAD, Severity.WARNING, "relu9")


def test_dead_relus_ignores_non_relu_layers():
    stats = dead_stats(0)
    stats.layers.append(act(3, "gelu", S.OTHER_ACT, units=10, dead_units=10))
    assert DEAD.check(stats) == []


# --------------------------------------------------------------------------------------------------------
# unused-parameters (GC106)
# --------------------------------------------------------------------------------------------------------

def test_unused_parameters_never_grad():
    stats = run([lin(0, "backbone"), lin(1, "head"), lin(2, "aux_head")],
                unused_parameters=["aux_head.weight", "aux_head.bias"])
    (f,) = UNUSED.check(stats)
    assert_well_formed(f, UNUSED, Severity.WARNING, "aux_head")
    assert f.evidence["parameters"] == ["aux_head.weight", "aux_head.bias"]
    assert f.evidence["modules"] == ["aux_head"]
    assert "2 trainable parameter tensors" in f.message and "`aux_head`" in f.message
    assert any("requires_grad_(False)" in fix for fix in f.fixes)


def test_unused_parameter_owned_by_the_model_root():
    (f,) = UNUSED.check(run([lin(0, "fc")], unused_parameters=["scale"]))
    assert f.evidence["modules"] == ["(model)"]
    assert "1 trainable parameter " in f.message


def test_unused_zero_grad_parameters():
    stats = run([lin(0, "a"), lin(1, "b")], zero_grad_parameters=["b.weight"])
    (f,) = UNUSED.check(stats)
    assert_well_formed(f, UNUSED, Severity.WARNING, "b")
    assert f.evidence["parameters"] == ["b.weight"]
    assert "exactly-zero" in f.message


def test_unused_both_lists_give_two_findings():
    stats = run([lin(0, "a"), lin(1, "b")], unused_parameters=["a.weight"], zero_grad_parameters=["b.bias"])
    found = UNUSED.check(stats)
    assert [f.layer for f in found] == ["a", "b"]


def test_unused_nothing_to_report():
    assert UNUSED.check(run([lin(0, "a")])) == []


# --------------------------------------------------------------------------------------------------------
# apply_rules: config on top of the rules
# --------------------------------------------------------------------------------------------------------

def test_apply_rules_disable_severity_and_options():
    stats = dead_stats(12)
    (f,) = apply_rules(stats, {})
    assert f.rule == "dead-relus" and f.severity is Severity.WARNING
    assert apply_rules(stats, {"dead-relus": RuleSettings(enabled=False)}) == []
    (f,) = apply_rules(stats, {"dead-relus": RuleSettings(severity=Severity.ERROR)})
    assert f.severity is Severity.ERROR
    assert apply_rules(stats, {"dead-relus": RuleSettings(options={"fraction": 0.9})}) == []


def test_apply_rules_severity_override_does_not_leak_into_the_rule():
    stats = dead_stats(12)
    apply_rules(stats, {"dead-relus": RuleSettings(severity=Severity.INFO)})
    assert DEAD.severity is Severity.WARNING
    (f,) = apply_rules(stats, {})
    assert f.severity is Severity.WARNING
