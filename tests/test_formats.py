"""CI formats (SARIF, JUnit, Markdown), --output FORMAT:PATH, GitHub annotations, baselines, ignores and
several models in one run.

Unit tests build reports from hand-made statistics (tests/test_golden.py); end-to-end tests run the real
CLI on a broken example and a healthy one and check every format produced in that one run.
"""

from __future__ import annotations

import copy
import io
import os
import re
import subprocess
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from gradcheck_cli.baseline import Ignore, apply_baseline, apply_ignores, baseline_document, normalize_spec
from gradcheck_cli.cli import app
from gradcheck_cli.findings import FailOn, ModelError, Severity, Suite
from gradcheck_cli.report import RENDERERS, parse_output, render, write_file
from gradcheck_cli.report.github import annotations, escape_data, escape_property
from gradcheck_cli.report.sarif import sarif_log
from gradcheck_cli.rules import RULES

from conftest import EXAMPLES, ROOT
from test_golden import broken_stats, build, healthy_stats

runner = CliRunner()
SARIF_SCHEMA = json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())
REPORT_SCHEMA = json.loads((ROOT / "gradcheck_cli" / "report" / "schema.json").read_text())
MODEL_ERROR = ModelError("missing.py:build", {"type": "input", "phase": "import", "message": "model file not found: "
                                              "missing.py", "where": None, "hint": "check the path", "exit_code": 2})


def broken():
    return build(broken_stats(), "model_broken.py:build")


def healthy():
    return build(healthy_stats(), "model_healthy.py:build")


def rendered(obj, fmt: str) -> str:
    out = io.StringIO()
    render(obj, fmt, out, width=200)   # wide: phrases are checked whole, never wrapped
    return out.getvalue()


def validate_sarif(doc: dict) -> None:
    jsonschema.Draft4Validator(SARIF_SCHEMA).validate(doc)


# -- SARIF -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [broken, healthy])
def test_sarif_is_valid_against_the_official_schema(make):
    doc = json.loads(rendered(make(), "sarif"))
    validate_sarif(doc)
    assert doc["version"] == "2.1.0"


def test_sarif_schema_rejects_an_invalid_log():   # the validator can fail
    doc = json.loads(rendered(broken(), "sarif"))
    doc["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        validate_sarif(doc)


def test_sarif_rules_come_from_the_registry_with_full_help():
    driver = sarif_log(Suite.of(broken()))["runs"][0]["tool"]["driver"]
    assert [r["id"] for r in driver["rules"]] == [r.code for r in RULES]
    for desc, r in zip(driver["rules"], RULES):
        assert desc["name"] == r.id
        assert desc["shortDescription"]["text"] == r.summary
        for section in ("What it does", "Why it matters", "Fix"):
            assert section in desc["help"]["text"] and f"**{section}**" in desc["help"]["markdown"]
        assert desc["defaultConfiguration"]["level"] == {"error": "error", "warning": "warning", "info": "note"}[
            r.severity.value]


def test_sarif_results_levels_locations_and_fingerprints():
    report = broken()
    report.findings[0].severity = Severity.INFO
    log = sarif_log(Suite.of(report))
    results = log["runs"][0]["results"]
    assert len(results) == len(report.findings)
    driver_rules = log["runs"][0]["tool"]["driver"]["rules"]
    for res in results:
        assert driver_rules[res["ruleIndex"]]["id"] == res["ruleId"]
        loc = res["locations"][0]
        assert loc["physicalLocation"]["artifactLocation"] == {"uri": "model_broken.py", "uriBaseId": "%SRCROOT%"}
        assert loc["physicalLocation"]["region"]["startLine"] in (9, 12)
        assert loc["logicalLocations"][0]["name"] == res["properties"]["layer"]
    assert {r["level"] for r in results} == {"note", "warning"}
    again = sarif_log(Suite.of(broken()))["runs"][0]["results"]
    assert sorted(r["partialFingerprints"]["gradcheckFinding/v1"] for r in again) == \
        sorted(r["partialFingerprints"]["gradcheckFinding/v1"] for r in results)


def test_sarif_suppressions_and_model_errors():
    report = broken()
    report.findings[0].suppressed = {"by": "ignore", "reason": "frozen on purpose"}
    log = sarif_log(Suite(reports=[report], errors=[MODEL_ERROR]))
    validate_sarif(log)
    suppressed = [r for r in log["runs"][0]["results"] if "suppressions" in r]
    assert len(suppressed) == 1 and "frozen on purpose" in suppressed[0]["suppressions"][0]["justification"]
    inv = log["runs"][0]["invocations"][0]
    assert inv["executionSuccessful"] is False and inv["exitCode"] == 2
    assert "missing.py" in inv["toolExecutionNotifications"][0]["message"]["text"]


# -- JUnit -----------------------------------------------------------------------------------------------------


def test_junit_one_testcase_per_rule_failed_at_fail_on():
    report = broken()
    root = ET.fromstring(rendered(report, "junit"))
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [f"{r.code} {r.id}" for r in RULES]
    failed = {c.get("name").split()[0] for c in cases if c.find("failure") is not None}
    assert failed == {f.code for f in report.failing()} == {"GC101", "GC104", "GC106"}
    assert suite.get("failures") == root.get("failures") == "3" and suite.get("tests") == str(len(RULES))
    gc101 = next(c for c in cases if c.get("name").startswith("GC101"))
    assert "kaiming_normal_" in gc101.find("failure").text and "model_broken.py:9" in gc101.find("failure").text


def test_junit_below_fail_on_passes_and_lists_the_finding():
    report = broken()
    report.fail_on = FailOn.ERROR
    root = ET.fromstring(rendered(report, "junit"))
    assert root.get("failures") == "0"
    out = [c.find("system-out") for c in root.iter("testcase")]
    assert sum(o is not None for o in out) == 3


def test_junit_skipped_rule_and_model_error():
    report = healthy()
    report.settings["rules"] = {"dead-relus": {"enabled": False}}
    root = ET.fromstring(rendered(Suite(reports=[report], errors=[MODEL_ERROR]), "junit"))
    suites = root.findall("testsuite")
    assert len(suites) == 2 and root.get("errors") == "1" and root.get("skipped") == "1"
    skipped = [c for c in suites[0].iter("testcase") if c.find("skipped") is not None]
    assert [c.get("name") for c in skipped] == ["GC105 dead-relus"]
    err = suites[1].find("testcase/error")
    assert err is not None and "model file not found" in err.get("message")


def test_junit_escapes_markup_in_names():
    report = broken()
    report.findings[0].message = 'a <b> & "c" ]]>'
    root = ET.fromstring(rendered(report, "junit"))   # parses: escaped
    assert any(c.find("failure") is not None and c.find("failure").get("message").startswith('a <b> & "c" ]]>')
               for c in root.iter("testcase"))


# -- Markdown --------------------------------------------------------------------------------------------------


def test_markdown_summary_has_a_row_per_active_finding_and_the_fixes():
    report = broken()
    report.findings[2].suppressed = {"by": "baseline", "reason": "known in b.json"}
    md = rendered(report, "markdown")
    rows = [line for line in md.splitlines() if line.startswith("| ") and ("warning" in line or "error" in line)]
    assert len(rows) == len(report.active_findings()) == 2
    assert "❌ FAIL" in md and "fail-on warning → exit 1" in md
    assert "\\|dL/dy\\|" in md                     # pipes in messages cannot break the table
    for f in report.active_findings():
        for fix in f.fixes:
            assert fix.split("`")[0][:30].replace("|", "\\|") in md
    assert "Suppressed" in md and "known in b.json" in md


def test_markdown_several_models_table():
    md = rendered(Suite(reports=[broken(), healthy()], errors=[MODEL_ERROR]), "markdown")
    assert "| Model | Verdict |" in md
    assert "`model_broken.py:build` | ❌ FAIL" in md and "`model_healthy.py:build` | ✅ PASS" in md
    assert "`missing.py:build` | ⛔ ERROR (exit 2)" in md
    assert md.startswith("## gradcheck ⛔ ERROR")


def test_markdown_appends_to_github_step_summary(tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    write_file(broken(), "markdown", summary)
    text = summary.read_text()
    assert text.startswith("# earlier step\n") and "## gradcheck" in text


# -- outputs and GitHub annotations ----------------------------------------------------------------------------


@pytest.mark.parametrize("value,default,expected", [
    ("sarif:out/x.sarif", None, ("sarif", "out/x.sarif")),
    ("junit:r.xml", "json", ("junit", "r.xml")),
    ("report.sarif", None, ("sarif", "report.sarif")),
    ("report.xml", None, ("junit", "report.xml")),
    ("report.md", None, ("markdown", "report.md")),
    ("report.html", None, ("html", "report.html")),
    ("report.json", None, ("json", "report.json")),
    ("report.out", None, ("text", "report.out")),
    ("report.out", "json", ("json", "report.out")),
    ("C:/reports/x.json", None, ("json", "C:/reports/x.json")),   # a drive letter is not a format
])
def test_parse_output(value, default, expected):
    fmt, path = parse_output(value, default)
    assert (fmt, path) == (expected[0], Path(expected[1]))


@pytest.mark.parametrize("value,message", [("jsn:out.json", "unknown format 'jsn'"), ("sarif:", "no path after 'sarif:'")])
def test_bad_output_is_a_one_line_input_error(tmp_path, monkeypatch, value, message):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["check", str(EXAMPLES / "healthy_mlp.py:build"), "-o", value])
    assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.output
    assert not list(tmp_path.iterdir())          # nothing written


def test_every_format_is_in_the_renderer_table_and_the_cli_enum():
    from gradcheck_cli.cli import OutputFormat
    from gradcheck_cli.config import FORMATS

    assert set(RENDERERS) == {f.value for f in OutputFormat} == set(FORMATS)


def test_github_annotations():
    report = broken()
    report.findings[0].severity = Severity.ERROR
    report.findings[1].suppressed = {"by": "ignore", "reason": "x"}
    lines = annotations(Suite(reports=[report], errors=[MODEL_ERROR]))
    assert len(lines) == 3
    assert lines[0].startswith("::error file=model_broken.py,line=9,title=gradcheck GC101 vanishing-gradients at "
                               "net.0 (model_broken.py%3Abuild)::")
    assert lines[1].startswith("::warning file=model_broken.py,line=12,")
    assert "%0AFix: " in lines[0] and "\n" not in "".join(lines)
    assert lines[2].startswith("::error title=gradcheck could not check missing.py%3Abuild::")
    assert escape_data("50%\r\n") == "50%25%0D%0A" and escape_property("a:b,c") == "a%3Ab%2Cc"


# -- ignores and baselines (plain data) ------------------------------------------------------------------------


def test_ignores_by_rule_layer_and_model():
    report = broken()
    apply_ignores(report, [Ignore(reason="aux head is trained in phase 2", rule="unused-parameters"),
                           Ignore(reason="last sigmoid is the output", layer="net.9", model="./model_broken.py:*"),
                           Ignore(reason="other model", rule="vanishing-gradients", model="other.py:*")])
    by = {f.code: f.suppressed for f in report.findings}
    assert by["GC106"] == {"by": "ignore", "reason": "aux head is trained in phase 2"}
    assert by["GC104"]["reason"] == "last sigmoid is the output"
    assert by["GC101"] is None
    assert report.exit_code == 1 and report.counts()["warning"] == 1


def _with_baseline(suite: Suite, doc: dict) -> Suite:
    apply_baseline(suite, doc["findings"], "b.json")
    return suite


def test_baseline_suppresses_known_findings_and_counts_new_ones():
    doc = baseline_document(Suite.of(broken()))
    assert [e["code"] for e in doc["findings"]] == ["GC101", "GC104", "GC106"]
    suite = _with_baseline(Suite.of(broken()), doc)
    assert suite.exit_code == 0 and suite.baseline["suppressed"] == 3 and suite.baseline["resolved"] == []
    assert all(f.suppressed == {"by": "baseline", "reason": "known in b.json"} for f in suite.findings())
    partial = copy.deepcopy(doc)
    partial["findings"] = [e for e in partial["findings"] if e["code"] != "GC104"]
    suite = _with_baseline(Suite.of(broken()), partial)
    assert suite.exit_code == 1 and [f.code for f in suite.reports[0].failing()] == ["GC104"]


def test_baseline_worsened_by_severity_or_metric_counts():
    doc = baseline_document(Suite.of(broken()))
    worse = copy.deepcopy(doc)
    gc101 = next(e for e in worse["findings"] if e["code"] == "GC101")
    gc101["metric"]["value"] *= 10            # the ratio was 10x better in the baseline: now it is worse
    suite = _with_baseline(Suite.of(broken()), worse)
    assert [f.code for f in suite.reports[0].failing()] == ["GC101"]
    assert any("worse than in the baseline" in n and "ratio" in n for n in suite.reports[0].notes)
    slight = copy.deepcopy(doc)
    next(e for e in slight["findings"] if e["code"] == "GC101")["metric"]["value"] *= 1.5   # within a factor 2
    assert _with_baseline(Suite.of(broken()), slight).exit_code == 0
    sev = copy.deepcopy(doc)
    sev["findings"][0]["severity"] = "info"
    assert [f.code for f in _with_baseline(Suite.of(broken()), sev).reports[0].failing()] == ["GC101"]
    frac = copy.deepcopy(doc)
    next(e for e in frac["findings"] if e["code"] == "GC104")["metric"]["value"] = 0.6   # 72% now, +12 points
    assert [f.code for f in _with_baseline(Suite.of(broken()), frac).reports[0].failing()] == ["GC104"]


def test_baseline_lists_entries_no_longer_found():
    doc = baseline_document(Suite.of(broken()))
    suite = _with_baseline(Suite.of(build(broken_stats(), "./model_broken.py:build")), doc)   # same model
    assert suite.baseline["suppressed"] == 3
    doc["findings"].append({"model": "model_broken.py:build", "code": "GC105", "rule": "dead-relus", "layer": "x",
                            "severity": "warning", "metric": None, "message": "gone"})
    suite = _with_baseline(Suite.of(broken()), doc)
    assert suite.baseline["resolved"] == [{"model": "model_broken.py:build", "code": "GC105", "layer": "x"}]
    assert "no longer found" in rendered(suite, "text")


def test_normalize_spec():
    assert normalize_spec("./a/../examples/x.py:build") == "examples/x.py:build"
    assert normalize_spec("pkg.mod:build") == "pkg.mod:build"


# -- several models, combined JSON -----------------------------------------------------------------------------


def test_combined_json_is_schema_valid_and_takes_the_highest_exit_code():
    suite = Suite(reports=[broken(), healthy()], errors=[MODEL_ERROR])
    doc = json.loads(rendered(suite, "json"))
    jsonschema.validate(doc, REPORT_SCHEMA)
    assert doc["summary"]["models"] == 3 and doc["summary"]["exit_code"] == 2 and doc["summary"]["verdict"] == "error"
    assert [r["model"]["spec"] for r in doc["reports"]] == ["model_broken.py:build", "model_healthy.py:build"]
    assert Suite(reports=[broken(), healthy()]).exit_code == 1
    assert Suite(reports=[healthy(), healthy()]).exit_code == 0
    text = rendered(suite, "text")
    assert "✗ ERROR  3 models, 1 could not be checked" in text and "→ exit 2" in text


# -- end to end: one run of a broken example and one of a healthy one, every format ----------------------------


def _all_outputs(tmp_path: Path, name: str) -> list[str]:
    args = []
    for fmt, suffix in [("json", "json"), ("sarif", "sarif"), ("junit", "xml"), ("markdown", "md"),
                        ("html", "html")]:
        args += ["-o", f"{fmt}:{tmp_path / f'{name}.{suffix}'}"]
    return args


@pytest.mark.parametrize("example,code", [("vanishing_sigmoid_mlp.py:build", 1), ("healthy_mlp.py:build", 0)])
def test_one_run_writes_every_format(tmp_path, example, code, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    r = runner.invoke(app, ["check", f"examples/{example}", *_all_outputs(tmp_path, "r")])
    assert r.exit_code == code, r.output
    assert r.output.startswith("gradcheck ") and ("FAIL" if code else "PASS") in r.output   # text on screen
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(report, REPORT_SCHEMA)
    sarif = json.loads((tmp_path / "r.sarif").read_text())
    validate_sarif(sarif)
    assert len(sarif["runs"][0]["results"]) == len(report["findings"])
    for res in sarif["runs"][0]["results"]:
        loc = res["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"]["uri"] == f"examples/{example.split(':')[0]}"
        line = (ROOT / "examples" / example.split(":")[0]).read_text().splitlines()[loc["region"]["startLine"] - 1]
        assert "nn." in line or "def " in line     # the line that defines the layer (or the factory)
    junit = ET.parse(tmp_path / "r.xml").getroot()
    assert int(junit.get("failures")) == len({f["code"] for f in report["findings"]
                                               if f["severity"] in ("warning", "error")})
    md = (tmp_path / "r.md").read_text()
    assert ("❌ FAIL" if code else "✅ PASS") in md
    html = (tmp_path / "r.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html
    for f in report["findings"]:
        assert f["code"] in md and f["code"] in html


def test_github_actions_annotations_end_to_end(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    r = runner.invoke(app, ["check", "examples/dead_relu.py:build"])
    assert r.exit_code == 1
    lines = [x for x in r.output.splitlines() if x.startswith("::")]
    # the human-readable report is fenced off (::stop-commands::TOKEN ... ::TOKEN::), then the annotations
    assert lines[0].startswith("::stop-commands::") and lines[1] == f"::{lines[0].split('::')[2]}::"
    lines = lines[2:]
    assert len(lines) == 2 and lines[0].startswith("::error file=examples/dead_relu.py,line=8,")  # no learning signal
    assert lines[1].startswith("::notice ")   # the info finding (exactly-zero gradients behind the dead units)
    monkeypatch.setenv("GITHUB_ACTIONS", "false")
    r = runner.invoke(app, ["check", "examples/dead_relu.py:build"])
    assert not [x for x in r.output.splitlines() if x.startswith("::")]


def test_github_annotations_keep_json_stdout_clean(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    r = runner.invoke(app, ["check", "examples/dead_relu.py:build", "-f", "json"])
    assert r.exit_code == 1
    json.loads(r.stdout)                      # annotations went to stderr
    assert "::error " in r.stderr


def test_baseline_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    base = tmp_path / "baseline.json"
    r = runner.invoke(app, ["check", "examples/dead_relu.py:build", "--write-baseline", str(base)])
    assert r.exit_code == 0, r.output        # recorded, so accepted in this run too
    doc = json.loads(base.read_text())
    assert doc["kind"] == "gradcheck-baseline" and [e["code"] for e in doc["findings"]] == ["GC105", "GC106"]
    r = runner.invoke(app, ["check", "examples/dead_relu.py:build", "--baseline", str(base)])
    flat = " ".join(r.output.split())   # independent of where a long temporary path makes Rich wrap
    assert r.exit_code == 0 and "Suppressed" in flat and "2 findings suppressed" in flat
    r = runner.invoke(app, ["check", "examples/vanishing_sigmoid_mlp.py:build", "--baseline", str(base)])
    assert r.exit_code == 1                    # a different model: nothing is known about it
    doc["findings"][0]["metric"]["value"] = 0.2          # the baseline had far fewer dead units: worse now
    base.write_text(json.dumps(doc))
    r = runner.invoke(app, ["check", "examples/dead_relu.py:build", "--baseline", str(base)])
    assert r.exit_code == 1 and "worse than in the baseline" in " ".join(r.output.split())


@pytest.mark.parametrize("content,message", [
    ("{not json", "cannot read baseline"),
    ('{"kind": "other"}', "is not a gradcheck baseline"),
    ('{"kind": "gradcheck-baseline", "schema_version": 9, "findings": []}', "schema_version 9"),
    ('{"kind": "gradcheck-baseline", "schema_version": 1, "findings": [{"code": 1}]}', "findings[0] is malformed"),
])
def test_bad_baseline_is_an_input_error(tmp_path, monkeypatch, content, message):
    monkeypatch.chdir(ROOT)
    base = tmp_path / "b.json"
    base.write_text(content)
    r = runner.invoke(app, ["check", "examples/healthy_mlp.py:build", "--baseline", str(base)])
    assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.output


def test_several_models_from_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = tmp_path / "gc.yaml"
    cfg.write_text(f"""
fail_on: warning
ignore:
  - rule: unused-parameters
    reason: the aux head trains in phase 2
models:
  - model: examples/healthy_mlp.py:build
    steps: 2
  - model: examples/dead_relu.py:build
    rules:
      dead-relus: {{severity: error}}
  - model: examples/saturated_tanh.py:build
    ignore:
      - rule: saturated-activations
        reason: known; fixed in the next release
  - {tmp_path / 'missing.py'}:build
""")
    r = runner.invoke(app, ["check", "--config", str(cfg), "-o", f"json:{tmp_path / 'all.json'}",
                            "-o", f"junit:{tmp_path / 'all.xml'}"])
    assert r.exit_code == 2, r.output           # the missing model outranks the findings
    assert "missing.py" in r.stderr and "4 models, 1 could not be checked" in r.stdout
    doc = json.loads((tmp_path / "all.json").read_text())
    jsonschema.validate(doc, REPORT_SCHEMA)
    specs = [x["model"]["spec"] for x in doc["reports"]]
    assert specs == ["examples/healthy_mlp.py:build", "examples/dead_relu.py:build",
                     "examples/saturated_tanh.py:build"]
    assert doc["reports"][0]["settings"]["steps"] == 2 and doc["reports"][1]["settings"]["steps"] == 3
    assert [f["severity"] for f in doc["reports"][1]["findings"] if not f["suppressed"]] == ["error"]
    assert [f["suppressed"]["reason"] for f in doc["reports"][1]["findings"] if f["suppressed"]] == [
        "the aux head trains in phase 2"]
    sat = doc["reports"][2]["findings"]
    assert sat and all(f["suppressed"] for f in sat if f["rule"] == "saturated-activations")
    assert doc["errors"][0]["error"]["exit_code"] == 2
    assert len(ET.parse(tmp_path / "all.xml").getroot().findall("testsuite")) == 4
    # MODEL on the command line checks just that model, with its entry's settings.
    r = runner.invoke(app, ["check", "examples/healthy_mlp.py:build", "--config", str(cfg), "-f", "json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["settings"]["steps"] == 2


@pytest.mark.parametrize("yaml_text,message", [
    ("ignore:\n  - rule: dead-relus\n", "ignore[0].reason': missing: every ignore needs a reason"),
    ("ignore:\n  - rule: dead-relu\n    reason: x\n", "unknown rule 'dead-relu'"),
    ("ignore:\n  - reason: x\n", "an ignore needs a rule, a layer, or both"),
    ("ignore:\n  - {rule: GC105, reason: x, why: y}\n", "ignore[0].why': unknown key"),
    ("models:\n  - model: a.py:b\n    format: json\n", "models[0].format': not allowed in a model entry"),
    ("models:\n  - batch: x.pt\n", "models[0].model': missing"),
    ("models: []\n", "expected a non-empty list"),
    ("output: [json:a.json, 3]\n", "output[1]': expected a non-empty string"),
])
def test_config_errors_for_the_new_keys(tmp_path, monkeypatch, yaml_text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gradcheck.yaml").write_text(yaml_text)
    r = runner.invoke(app, ["check", str(EXAMPLES / "healthy_mlp.py:build")])
    assert r.exit_code == 2 and message in r.stderr, r.stderr


def test_no_model_and_no_models_list(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["check"])
    assert r.exit_code == 2 and "no model given" in r.stderr


def test_per_model_flags_with_several_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gradcheck.yaml").write_text(f"models:\n  - {EXAMPLES / 'healthy_mlp.py'}:build\n")
    r = runner.invoke(app, ["check", "--batch", "x.pt"])
    assert r.exit_code == 2 and "--batch cannot apply to every model" in r.stderr


def test_failed_run_writes_every_requested_format(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["check", "missing.py:build", *_all_outputs(tmp_path, "e")])
    assert r.exit_code == 2
    jsonschema.validate(json.loads((tmp_path / "e.json").read_text()), REPORT_SCHEMA)
    validate_sarif(json.loads((tmp_path / "e.sarif").read_text()))
    assert ET.parse(tmp_path / "e.xml").getroot().get("errors") == "1"
    assert "⛔ ERROR" in (tmp_path / "e.md").read_text()
    assert "model file not found" in (tmp_path / "e.html").read_text()


# -- the shipped CI example ------------------------------------------------------------------------------------


def test_example_workflow_uses_real_flags_and_a_valid_config(monkeypatch):
    import re

    import yaml

    from gradcheck_cli.config import load_config

    workflow = yaml.safe_load((EXAMPLES / "ci" / "gradcheck.yml").read_text())
    steps = workflow["jobs"]["gradients"]["steps"]
    command = next(s["run"] for s in steps if "gradcheck check" in s.get("run", ""))
    flags = set(re.findall(r"(--[a-z-]+)", command))
    help_text = runner.invoke(app, ["check", "--help"], env={"COLUMNS": "250"}).output
    assert flags and all(f in help_text for f in flags), flags
    outputs = re.findall(r"--output (\w+):", command)
    assert set(outputs) == {"sarif", "junit", "markdown", "html"} and set(outputs) <= set(RENDERERS)
    assert any("upload-sarif" in s.get("uses", "") for s in steps)
    cfg = load_config(EXAMPLES / "ci" / "gradcheck.yaml")
    assert len(cfg["models"]) == 3 and cfg["ignore"][0].reason
    monkeypatch.chdir(ROOT)
    r = runner.invoke(app, ["check", "--config", "examples/ci/gradcheck.yaml", "-f", "markdown"])
    assert r.exit_code == 0, r.output        # the three healthy examples pass
    assert r.output.startswith("## gradcheck ✅ PASS") and "3 models" in r.output


@pytest.mark.slow
def test_example_workflow_runs_as_written_in_a_new_repository(tmp_path):
    """A repository that adopts the workflow has no baseline yet, and gradcheck is not on PyPI: the install
    step installs from the repository, and the check step (run here with bash, as Actions runs it) passes
    without a baseline and writes every report."""
    import shutil

    import yaml

    from conftest import console_script

    workflow = yaml.safe_load((EXAMPLES / "ci" / "gradcheck.yml").read_text())
    steps = workflow["jobs"]["gradients"]["steps"]
    install = next(s["run"] for s in steps if "pip install" in s.get("run", ""))
    assert not re.search(r"pip install\s+gradcheck\b", install), "gradcheck is not on PyPI"
    assert 'pip install "$GRADCHECK_SOURCE"' in install and workflow["env"]["GRADCHECK_SOURCE"] == "."
    assert (ROOT / "pyproject.toml").exists()                    # "." is installable: this repository
    assert not any(s.get("with", {}).get("cache") for s in steps)   # a pip cache needs a lock file
    script = next(s["run"] for s in steps if "gradcheck check" in s.get("run", ""))
    shutil.copytree(EXAMPLES, tmp_path / "examples")              # a fresh checkout: no baseline, no reports
    summary = tmp_path / "summary.md"
    # The shipped config's three models run in the test above; one keeps this end-to-end run short.
    (tmp_path / "one.yaml").write_text("models:\n  - model: examples/healthy_mlp.py:build\n")
    env = {**os.environ, **workflow["env"], "GRADCHECK_CONFIG": "one.yaml",
           "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_ACTIONS": "true",
           "PATH": f"{console_script().parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for name in ("gradcheck.sarif", "gradcheck-junit.xml", "gradcheck.html"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "PASS" in summary.read_text()
    assert 'if [ -f gradcheck-baseline.json ]; then baseline=(--baseline gradcheck-baseline.json); fi' in script


def test_help_shows_defaults_and_the_output_syntax():
    # Rich markup once swallowed "[default: 3]" as a tag; the brackets are escaped now.
    # "[default:\u00a03]": a no-break space keeps the default on one line of the wrapped help.
    text = runner.invoke(app, ["check", "--help"], env={"COLUMNS": "250"}).output.replace("\u00a0", " ")
    for default in ("[default: 3]", "[default: text]", "[default: warning]", "[default: 40]"):
        assert default in text, default
    assert "[FORMAT:]PATH" in text and "--write-baseline" in text and "--baseline" in text
