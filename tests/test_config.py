"""gradcheck_cli.config: strict validation of gradcheck.yaml and the defaults < file < flags precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradcheck_cli.config import RuleSettings, Settings, load_config, resolve
from gradcheck_cli.errors import EXIT_USAGE, InputError
from gradcheck_cli.findings import FailOn, Severity

NO_FLAGS = {"model": "m.py:build", "batch": None, "loss": None, "input_shape": None, "steps": None,
            "format": None, "output": None, "fail_on": None, "seed": None, "device": None, "max_rows": None}


def flags(**kw):
    d = dict(NO_FLAGS)
    d.update(kw)
    return d


def cfg(tmp_path: Path, text: str, name: str = "gc.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def error_of(path: Path) -> InputError:
    with pytest.raises(InputError) as info:
        load_config(path)
    err = info.value
    assert err.exit_code == EXIT_USAGE
    line = err.one_line()
    assert "\n" not in line
    assert str(path) in line, "the error names the file"
    return err


def test_valid_file(tmp_path):
    p = cfg(tmp_path, """
steps: 5
seed: 3
fail_on: error
format: json
device: cpu
max_rows: 0
input_shape: [8, 3, 32, 32]
batch: data.pt
loss: mse
output: out.json
rules:
  dead-relus:
    fraction: 0.7
    min_units: 2
  unused-parameters: false
  exploding-gradients:
    severity: error
    max_grad_norm: 100
  GC104: {enabled: false}
""")
    out = load_config(p)
    assert out["steps"] == 5 and out["seed"] == 3
    assert out["fail_on"] is FailOn.ERROR
    assert out["format"] == "json" and out["device"] == "cpu" and out["max_rows"] == 0
    assert out["input_shape"] == (8, 3, 32, 32)
    assert out["batch"] == "data.pt" and out["loss"] == "mse" and out["outputs"] == ["out.json"]
    rules = out["rules"]
    assert rules["dead-relus"] == RuleSettings(enabled=True, severity=None, options={"fraction": 0.7, "min_units": 2})
    assert rules["unused-parameters"].enabled is False
    assert rules["exploding-gradients"].severity is Severity.ERROR
    assert rules["exploding-gradients"].options == {"max_grad_norm": 100.0}
    assert isinstance(rules["exploding-gradients"].options["max_grad_norm"], float)
    assert rules["saturated-activations"].enabled is False, "rules may be keyed by code; stored by id"


def test_input_shape_as_string(tmp_path):
    assert load_config(cfg(tmp_path, "input_shape: '8,16'\n"))["input_shape"] == (8, 16)


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_file_is_no_settings(tmp_path, text):
    assert load_config(cfg(tmp_path, text)) == {}


def test_unknown_top_level_key_suggests_nearest(tmp_path):
    err = error_of(cfg(tmp_path, "stepz: 5\n"))
    line = err.one_line()
    assert "'stepz'" in line and "unknown key" in line
    assert "did you mean 'steps'" in line


def test_unknown_top_level_key_without_close_match_lists_allowed(tmp_path):
    line = error_of(cfg(tmp_path, "colour: blue\n")).one_line()
    assert "'colour'" in line and "steps" in line and "fail_on" in line


@pytest.mark.parametrize("text, key, needle", [
    ("steps: five\n", "steps", "integer"),
    ("steps: 2.5\n", "steps", "integer"),
    ("steps: true\n", "steps", "integer"),
    ("seed: [1]\n", "seed", "integer"),
    ("fail_on: sometimes\n", "fail_on", "error, warning, info, never"),
    ("format: xml\n", "format", "text, json"),
    ("device: tpu\n", "device", "auto, cpu, cuda"),
    ("input_shape: [8, 0]\n", "input_shape", "positive"),
    ("input_shape: 'eight'\n", "input_shape", "positive"),
    ("batch: 3\n", "batch", "string"),
    ("rules: [dead-relus]\n", "rules", "mapping"),
    ("rules:\n  dead-relus: 3\n", "rules.dead-relus", "mapping"),
    ("rules:\n  dead-relus: {enabled: 'yes'}\n", "rules.dead-relus.enabled", "true or false"),
    ("rules:\n  dead-relus: {fraction: high}\n", "rules.dead-relus.fraction", "number"),
    ("rules:\n  dead-relus: {min_units: 2.5}\n", "rules.dead-relus.min_units", "integer"),
    ("rules:\n  dead-relus: {fraction: -0.5}\n", "rules.dead-relus.fraction", "non-negative"),
])
def test_wrong_type(tmp_path, text, key, needle):
    line = error_of(cfg(tmp_path, text)).one_line()
    assert f"key '{key}'" in line
    assert needle in line


@pytest.mark.parametrize("text, key", [("steps: 0\n", "steps"), ("steps: -3\n", "steps"), ("seed: -1\n", "seed"),
                                       ("max_rows: -1\n", "max_rows")])
def test_out_of_range(tmp_path, text, key):
    line = error_of(cfg(tmp_path, text)).one_line()
    assert f"key '{key}'" in line and "at least" in line


def test_unknown_rule_suggests_id(tmp_path):
    line = error_of(cfg(tmp_path, "rules:\n  dead-relu:\n    fraction: 0.3\n")).one_line()
    assert "'rules.dead-relu'" in line and "unknown rule" in line
    assert "did you mean 'dead-relus'" in line


def test_unknown_rule_option_suggests_option(tmp_path):
    line = error_of(cfg(tmp_path, "rules:\n  dead-relus:\n    fracton: 0.3\n")).one_line()
    assert "'rules.dead-relus.fracton'" in line and "unknown option" in line
    assert "did you mean 'fraction'" in line


def test_option_of_another_rule_is_unknown(tmp_path):
    # `ratio` exists for vanishing-gradients, not for dead-relus.
    line = error_of(cfg(tmp_path, "rules:\n  dead-relus: {ratio: 0.3}\n")).one_line()
    assert "'rules.dead-relus.ratio'" in line and "unknown option" in line


def test_severity_value_not_allowed(tmp_path):
    line = error_of(cfg(tmp_path, "rules:\n  dead-relus:\n    severity: critical\n")).one_line()
    assert "'rules.dead-relus.severity'" in line
    assert "error, warning, info" in line and "'critical'" in line


def test_yaml_syntax_error_reports_line_and_column(tmp_path):
    # Line 3, column 4 is the ':' that cannot appear inside the unclosed flow sequence.
    line = error_of(cfg(tmp_path, "steps: 3\nrules: [a\n  b: c\n")).one_line()
    assert "YAML syntax error" in line
    assert "line 3, column 4" in line


def test_yaml_syntax_error_unclosed_quote(tmp_path):
    line = error_of(cfg(tmp_path, "seed: 1\nbatch: \"data.pt\n")).one_line()
    assert "YAML syntax error" in line and "line " in line and "column " in line


def test_top_level_must_be_a_mapping(tmp_path):
    line = error_of(cfg(tmp_path, "- steps\n- seed\n")).one_line()
    assert "mapping" in line


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "not found" in info.value.one_line()


@pytest.mark.parametrize("text", ["rules:\n  dead-relus: {fraction: 2}\n",
                                  "rules:\n  saturated-activations: {fraction: 1.5}\n"])
def test_fraction_above_one_is_rejected(tmp_path, text):
    with pytest.raises(InputError):
        load_config(cfg(tmp_path, text))


# --------------------------------------------------------------------------------------------------------
# resolve: precedence and discovery
# --------------------------------------------------------------------------------------------------------

def test_defaults_without_any_config(tmp_path):
    s = resolve(flags(), None, cwd=tmp_path)
    assert isinstance(s, Settings)
    assert (s.steps, s.seed, s.device, s.fail_on, s.format, s.max_rows) == (3, 0, "auto", FailOn.WARNING, "text", 40)
    assert s.rules == {} and s.config_path is None and s.model == "m.py:build"


def test_precedence_flags_over_file_over_defaults(tmp_path):
    p = cfg(tmp_path, "steps: 5\nseed: 9\nfail_on: error\nformat: json\n")
    s = resolve(flags(steps=7, fail_on=FailOn.NEVER), p, cwd=tmp_path)
    assert s.steps == 7, "flag beats file"
    assert s.fail_on is FailOn.NEVER, "flag beats file"
    assert s.seed == 9 and s.format == "json", "file beats default"
    assert s.max_rows == 40 and s.device == "auto", "default when neither"
    assert s.config_path == str(p)


def test_explicit_zero_flag_is_not_treated_as_missing(tmp_path):
    p = cfg(tmp_path, "seed: 9\nmax_rows: 10\n")
    s = resolve(flags(seed=0, max_rows=0), p, cwd=tmp_path)
    assert s.seed == 0 and s.max_rows == 0


def test_gradcheck_yaml_is_discovered_in_cwd(tmp_path):
    (tmp_path / "gradcheck.yaml").write_text("steps: 11\nrules:\n  dead-relus: {fraction: 0.8}\n")
    s = resolve(flags(), None, cwd=tmp_path)
    assert s.steps == 11
    assert s.rules["dead-relus"].options == {"fraction": 0.8}
    assert s.config_path == str(tmp_path / "gradcheck.yaml")


def test_discovered_config_errors_name_the_file(tmp_path):
    (tmp_path / "gradcheck.yaml").write_text("stepz: 1\n")
    with pytest.raises(InputError) as info:
        resolve(flags(), None, cwd=tmp_path)
    assert "gradcheck.yaml" in info.value.one_line()


def test_explicit_config_beats_discovered_one(tmp_path):
    (tmp_path / "gradcheck.yaml").write_text("steps: 11\n")
    other = cfg(tmp_path, "steps: 4\n", name="other.yaml")
    s = resolve(flags(), other, cwd=tmp_path)
    assert s.steps == 4 and s.config_path == str(other)


def test_no_discovery_outside_cwd(tmp_path):
    (tmp_path / "gradcheck.yaml").write_text("steps: 11\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    assert resolve(flags(), None, cwd=sub).steps == 3


def test_model_entry_rules_merge_over_top_level_rules(tmp_path):
    """README: a model entry's `rules` are merged over the top-level ones, option by option."""
    from gradcheck_cli.config import expand_models

    p = cfg(tmp_path, """
rules:
  dead-relus: {fraction: 0.7, severity: error}
  unused-parameters: {enabled: false}
  vanishing-gradients: {ratio: 1.0e-4}
models:
  - model: a.py:build
    rules:
      dead-relus: {min_units: 2}
      unused-parameters: {severity: info}
  - model: b.py:build
""")
    s = resolve(flags(model=None), p)
    a, b = expand_models(s, model_given=False)
    dr = a.rules["dead-relus"]
    assert dr.options == {"fraction": 0.7, "min_units": 2}
    assert dr.severity is Severity.ERROR and dr.enabled
    assert a.rules["unused-parameters"].enabled is False, "enabled: false at the top stays unless the entry sets it"
    assert a.rules["unused-parameters"].severity is Severity.INFO
    assert a.rules["vanishing-gradients"].options == {"ratio": 1e-4}
    assert b.rules == s.rules


def test_configured_severity_keeps_deliberate_info_downgrades():
    """`severity: error` on vanishing-gradients must not turn a gated RNN's info (decay through time at
    init, which the gates can learn away) into an error; a real finding of the rule does get it."""
    from gradcheck_cli.pipeline import run_check
    from conftest import EXAMPLES

    rules = {"vanishing-gradients": RuleSettings(severity=Severity.ERROR)}
    lstm = run_check(Settings(model=f"{EXAMPLES}/healthy_lstm.py:build", rules=rules, device="cpu"))
    through_time = [f for f in lstm.findings if f.rule == "vanishing-gradients"]
    assert through_time and all(f.severity is Severity.INFO for f in through_time)
    assert lstm.exit_code == 0
    sig = run_check(Settings(model=f"{EXAMPLES}/vanishing_sigmoid_mlp.py:build", rules=rules, device="cpu"))
    assert [f.severity for f in sig.findings if f.rule == "vanishing-gradients"] == [Severity.ERROR]
