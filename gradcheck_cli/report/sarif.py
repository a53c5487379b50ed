"""SARIF 2.1.0 for GitHub code scanning and other SARIF viewers.

tool.driver.rules comes from the rule registry (each rule's docstring is its full description and help);
a result's level follows its severity; its location is the model file and the line that defines the
offending layer (see gradcheck_cli.sources), relative to the working directory under %SRCROOT% (run
gradcheck from the repository root so the paths match the checkout). Findings suppressed by a baseline
or an ignore carry a SARIF `suppressions` entry; models that could not be checked are tool execution
notifications.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TextIO

from gradcheck_cli import __version__
from gradcheck_cli.findings import Finding, Report, Severity, Suite, plain_text
from gradcheck_cli.report import escape
from gradcheck_cli.report import verification as vf

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/gradcheck/gradcheck"
LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
# GitHub code scanning shows non-security alerts by `problem.severity`.
PROBLEM_SEVERITY = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "recommendation"}


def _rule_descriptor(r: Any) -> dict[str, Any]:
    sections = r.sections()
    paragraphs = {k: " ".join(line.strip() for line in v.splitlines() if line.strip()) for k, v in sections.items()}
    help_text = "\n\n".join(f"{k}: {v}" for k, v in paragraphs.items())
    help_md = "\n\n".join(f"**{k}**\n\n{v}" for k, v in paragraphs.items())
    if r.options:
        opts = "; ".join(f"{o.name} = {o.default!r}: {o.help}" for o in r.options)
        help_text += f"\n\nOptions (gradcheck.yaml: rules: {{{r.id}: {{option: value}}}}): {opts}"
        help_md += "\n\n**Options**\n\n" + "\n".join(f"- `{o.name}` = `{o.default!r}`: {o.help}" for o in r.options)
    return {
        "id": r.code,
        "name": r.id,
        "shortDescription": {"text": r.summary},
        "fullDescription": {"text": paragraphs.get("What it does", r.summary)},
        "help": {"text": help_text, "markdown": help_md},
        "helpUri": f"{INFORMATION_URI}#{r.code.lower()}-{r.id}",
        "defaultConfiguration": {"level": LEVELS[r.severity]},
        "properties": {"tags": ["gradient-health", "pytorch", r.id], "precision": "high",
                       "problem.severity": PROBLEM_SEVERITY[r.severity]},
    }


def _artifact(path: str) -> dict[str, Any]:
    if Path(path).is_absolute():
        return {"uri": Path(path).as_uri()}
    return {"uri": path, "uriBaseId": "%SRCROOT%"}


def fingerprint(spec: str, f: Finding) -> str:
    """Stable across runs: the model, the rule and the layer (not the numbers, which move)."""
    return hashlib.sha256(f"{spec}\0{f.code}\0{f.layer}".encode()).hexdigest()[:32]


def _result(report: Report, f: Finding, rule_index: dict[str, int]) -> dict[str, Any]:
    spec = report.model["spec"]
    layer = f.layer if f.layer else "(model)"
    text = plain_text(f.message)     # "text" is plain; "markdown" keeps the `code` spans
    checked = vf.by_fix(f.verification)
    if f.fixes:
        text += f" Fix: {plain_text(f.fixes[0])}"
        if 0 in checked:
            text += f" [{vf.one_line(checked[0])}]"
    md = f.message + ("\n\nFixes:\n" + "\n".join(
        f"{i}. {x}" + (f" ({escape.md_text(vf.one_line(checked[i - 1]))})" if i - 1 in checked else "")
        for i, x in enumerate(f.fixes, 1)) if f.fixes else "")
    location: dict[str, Any] = {"logicalLocations": [{"name": layer, "fullyQualifiedName": f"{spec}::{layer}",
                                                       "kind": "member"}]}
    where = f.location or report.model.get("source")
    if where:
        location["physicalLocation"] = {"artifactLocation": _artifact(where["file"]),
                                        "region": {"startLine": int(where["line"])}}
    result: dict[str, Any] = {
        "ruleId": f.code,
        "ruleIndex": rule_index[f.code],
        "level": LEVELS[f.severity],
        "message": {"text": text, "markdown": md},
        "locations": [location],
        "partialFingerprints": {"gradcheckFinding/v1": fingerprint(spec, f)},
        "properties": {"rule": f.rule, "model": spec, "layer": f.layer, "severity": f.severity.value,
                       "evidence": f.evidence, "fixes": [plain_text(x) for x in f.fixes],
                       **({"verification": f.verification} if f.verification is not None else {})},
    }
    if f.suppressed:
        result["suppressions"] = [{"kind": "external", "status": "accepted",
                                   "justification": f"{f.suppressed['by']}: {f.suppressed['reason']}"}]
    return result


def sarif_log(suite: Suite) -> dict[str, Any]:
    from gradcheck_cli.findings import _json_safe
    from gradcheck_cli.rules import RULES

    rule_index = {r.code: i for i, r in enumerate(RULES)}
    results = [_result(rep, f, rule_index) for rep in suite.reports for f in rep.sorted_findings()]
    notifications = [{
        "level": "error",
        "message": {"text": f"{e.spec}: {e.error['type']} error during {e.error['phase']}: {e.error['message']}"
                            + (f" ({e.error['hint']})" if e.error.get("hint") else "")},
        "properties": {"model": e.spec, **e.error},
    } for e in suite.errors]
    invocation: dict[str, Any] = {"executionSuccessful": not suite.errors, "exitCode": suite.exit_code}
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    run = {
        "tool": {"driver": {"name": "gradcheck", "version": __version__, "semanticVersion": __version__,
                            "informationUri": INFORMATION_URI,
                            "rules": [_rule_descriptor(r) for r in RULES]}},
        "invocations": [invocation],
        "columnKind": "unicodeCodePoints",
        "results": results,
        "properties": {"models": [r.model["spec"] for r in suite.reports] + [e.spec for e in suite.errors],
                       "fail_on": suite.fail_on.value, "verdict": suite.verdict},
    }
    distributed = [r.run.get("distributed") for r in suite.reports if r.run.get("distributed")]
    if distributed:   # under torchrun: world size, backend, strategy
        run["properties"]["distributed"] = distributed[0]
    return _json_safe({"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]})


def render(suite: Suite, out: TextIO, **_: object) -> None:
    json.dump(escape.json_clean(sarif_log(suite)), out, indent=2, allow_nan=False)
    out.write("\n")
