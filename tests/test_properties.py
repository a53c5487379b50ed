"""Property-based tests: rules and renderers never raise on well-formed statistics, whatever the numbers
(NaN, Inf, zeros, no layers, thousands of layers), and every report they produce is schema-valid.
The config loader answers any bad document with a ConfigError/InputError, never another exception."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
jsonschema = pytest.importorskip("jsonschema")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gradcheck_cli import stats as S  # noqa: E402
from gradcheck_cli.config import load_config  # noqa: E402
from gradcheck_cli.errors import InputError  # noqa: E402
from gradcheck_cli.findings import FailOn  # noqa: E402
from gradcheck_cli.pipeline import apply_rules, make_report  # noqa: E402
from gradcheck_cli.report import error_document, render  # noqa: E402

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "gradcheck_cli" / "report" / "schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

any_float = st.floats(allow_nan=True, allow_infinity=True, width=32)
opt_float = st.none() | any_float
nonneg = st.none() | st.just(float("nan")) | st.floats(min_value=0, allow_infinity=True, width=32)
fraction = st.none() | st.floats(min_value=0, max_value=1)
names = st.text(alphabet="abcdefghij._0123456789", min_size=0, max_size=12)


@st.composite
def layer_stats(draw, index: int) -> S.LayerStats:
    role = draw(st.sampled_from([S.PARAM, S.ACTIVATION, S.FUNCTIONAL, S.MODEL]))
    act = draw(st.sampled_from([None, S.SIGMOID, S.TANH, S.RELU, S.OTHER_ACT]))
    units = draw(st.none() | st.integers(0, 4096))
    dead = None if units is None else draw(st.integers(0, units))
    recurrent = draw(st.sampled_from([None, None, None, "RNN", "LSTM", "GRU"]))
    profile = draw(st.none() | st.lists(nonneg.filter(lambda x: x is not None), max_size=70)) if recurrent else None
    return S.LayerStats(
        index=index, name=draw(names), type=draw(st.sampled_from(["Linear", "Conv2d", "ReLU", "Sigmoid", "LSTM",
                                                                  "LayerNorm", "sigmoid()", "Net"])),
        role=role, activation=act, recurrent=recurrent, params=draw(st.integers(0, 10**9)),
        trainable_params=draw(st.integers(0, 10**9)), calls=draw(st.integers(0, 50)),
        weight_norm=draw(nonneg), weight_rms=draw(nonneg), fan_in=draw(st.none() | st.integers(0, 10**6)),
        fan_out=draw(st.none() | st.integers(0, 10**6)), bias_mean=draw(opt_float),
        recurrent_sigma_max=draw(nonneg), grad_norm=draw(nonneg), grad_norm_max=draw(nonneg),
        output_grad_norm=draw(nonneg), output_grad_norm_max=draw(nonneg), saturated_fraction=draw(fraction),
        units=units, dead_units=dead, nonfinite_outputs=draw(st.integers(0, 9)),
        nonfinite_output_grads=draw(st.integers(0, 9)), nonfinite_param_grads=draw(st.integers(0, 9)),
        time_steps=len(profile) if profile else None, bidirectional=draw(st.booleans()) if recurrent else None,
        time_grad_profile=profile, time_grad_first_last=draw(nonneg) if recurrent else None,
        time_grad_min_max=draw(fraction) if recurrent else None,
    )


@st.composite
def run_stats(draw, max_layers: int = 40) -> S.RunStats:
    n = draw(st.integers(0, max_layers))
    layers = [draw(layer_stats(i)) for i in range(n)]
    layer_names = [l.name for l in layers]
    op = {"op": "log", "file": "m.py", "line": 3, "module": "(model)", "label": "log() at m.py:3 in `(model)`",
          "forward_nonfinite": 1, "backward_nonfinite": 0}
    ops = draw(st.sampled_from([[], [op]]))
    origins = st.none() | (st.sampled_from(layer_names) if layer_names else st.none()) | st.just(op["label"]) \
        | st.just("not-a-layer")
    steps = draw(st.integers(1, 5))
    return S.RunStats(
        layers=layers, steps=steps, losses=draw(st.lists(any_float, min_size=0, max_size=steps)),
        parameters=draw(st.integers(0, 10**10)), trainable_parameters=draw(st.integers(0, 10**10)),
        total_grad_norm=draw(nonneg), total_grad_norm_max=draw(nonneg), input_nonfinite=draw(st.integers(0, 10)),
        first_nonfinite_forward=draw(origins), first_nonfinite_backward=draw(origins),
        unused_parameters=draw(st.lists(names, max_size=5)), zero_grad_parameters=draw(st.lists(names, max_size=5)),
        nonfinite_ops=ops,
    )


def _report(stats: S.RunStats, fail_on: FailOn = FailOn.WARNING):
    findings = apply_rules(stats, {})
    settings_ = {"steps": stats.steps, "seed": 0, "device": "cpu", "batch": "synthetic", "loss": "mse",
                 "fail_on": fail_on.value, "config": None, "rules": {}}
    return make_report(stats, findings, spec="m.py:build", model_class="Net", settings=settings_,
                       fail_on=fail_on, timings={"load_s": 0.0, "passes_s": 0.0, "analysis_s": 0.0, "total_s": 0.0})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(run_stats(), st.sampled_from(list(FailOn)))
def test_rules_and_renderers_never_raise_and_reports_are_schema_valid(stats, fail_on):
    report = _report(stats, fail_on)
    for f in report.findings:
        assert f.message and f.fixes, f
    out = io.StringIO()
    render(report, "json", out)
    doc = json.loads(out.getvalue())
    errors = sorted(VALIDATOR.iter_errors(doc), key=str)
    assert not errors, errors[0]
    assert doc["summary"]["exit_code"] == report.exit_code
    text = io.StringIO()
    render(report, "text", text, color=False, width=80, max_rows=12)
    assert ("PASS" in text.getvalue()) == (report.exit_code == 0)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.integers(1000, 3000), nonneg, st.booleans())
def test_huge_depths(depth, value, vanish):
    layers = [S.LayerStats(index=i, name=f"l{i}", type="Linear", role=S.PARAM,
                           output_grad_norm=(value if value is not None else 1.0) * ((0.9 if vanish else 1.1) ** i))
              for i in range(depth)]
    report = _report(S.RunStats(layers=layers, steps=3, losses=[1.0, 1.0, 1.0]))
    out = io.StringIO()
    render(report, "json", out)
    assert not list(VALIDATOR.iter_errors(json.loads(out.getvalue())))
    text = io.StringIO()
    render(report, "text", text, color=False, width=80)   # default --max-rows keeps the table short
    assert len(text.getvalue().splitlines()) < 400


def test_error_document_is_schema_valid():
    doc = error_document({"type": "user-code", "phase": "forward", "message": "did not finish", "where": None,
                          "hint": None, "exit_code": 3}, "m.py:build")
    assert not list(VALIDATOR.iter_errors(doc))
    assert list(VALIDATOR.iter_errors({**doc, "summary": {**doc["summary"], "verdict": "pass"}}))


yaml_scalars = st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8)
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8) | st.sampled_from(["steps", "seed", "rules", "fail_on", "dead-relus", "fraction",
                                          "severity", "enabled", "GC101", "timeout"]), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(st.sampled_from(["steps", "seed", "fail_on", "input_shape", "device", "format",
                                            "rules", "timeout", "max_rows", "stepz", "loss"]), yaml_values,
                           max_size=5) | yaml_values)
def test_config_loader_answers_bad_documents_with_input_errors(tmp_path_factory, doc):
    import yaml

    path = tmp_path_factory.mktemp("cfg") / "gradcheck.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        load_config(path)
    except InputError as exc:
        assert str(path) in exc.message or "YAML" in exc.message or "top level" in exc.message


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=":{}[]-#&*!|>'\"%@`, \n\tabc019", max_size=40))
def test_config_loader_answers_broken_yaml_with_input_errors(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "gradcheck.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except InputError as exc:
        assert exc.message
