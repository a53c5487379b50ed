"""JUnit XML for CI dashboards: one testsuite per model, one testcase per rule.

A testcase fails when its rule reported a finding at or above --fail-on (not suppressed); it is
skipped when the rule is disabled in the config. Findings below the threshold, and suppressed ones, are
listed in the testcase's system-out. A model that could not be checked is a testsuite with one
testcase in error.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TextIO

from gradcheck_cli.findings import Finding, ModelError, Report, Suite
from gradcheck_cli.numbers import fmt
from gradcheck_cli.report import escape
from gradcheck_cli.report import verification as vf


def _finding_text(f: Finding) -> str:
    lines = [f"{f.severity.value.upper()} {f.code} {f.rule}" + (f" at {f.layer or '(model)'}" if f.layer is not None
                                                                else "")]
    if f.location:
        lines[0] += f" ({f.location['file']}:{f.location['line']})"
    if f.suppressed:
        lines[0] += f" [suppressed by {f.suppressed['by']}: {f.suppressed['reason']}]"
    lines.append(f.message)
    for k, v in f.evidence.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            lines.append(f"  {k} = {fmt(v)}")
    checked = vf.by_fix(f.verification)
    for i, x in enumerate(f.fixes, 1):
        lines.append(f"  fix {i}: {x}")
        if i - 1 in checked:
            lines.append(f"    {vf.one_line(checked[i - 1])}")
    return "\n".join(lines)


def _suite_for_report(report: Report) -> ET.Element:
    from gradcheck_cli.rules import RULES

    spec = report.model["spec"]
    threshold = report.fail_on.threshold()
    total = report.timings.get("total_s", 0.0)
    ts = ET.Element("testsuite", name=spec)
    props = ET.SubElement(ts, "properties")
    for k in ("steps", "seed", "device", "batch", "loss", "fail_on"):
        ET.SubElement(props, "property", name=k, value=str(report.settings.get(k)))
    if report.distribution:
        ET.SubElement(props, "property", name="distributed", value=report.distribution)
    failures = skipped = 0
    for r in RULES:
        case = ET.SubElement(ts, "testcase", classname=f"gradcheck.{spec}", name=f"{r.code} {r.id}", time="0")
        mine = [f for f in report.sorted_findings() if f.code == r.code]
        failing = [f for f in mine if f.active and threshold is not None and f.severity.rank >= threshold]
        other = [f for f in mine if f not in failing]
        rule_cfg = report.settings.get("rules", {}).get(r.id, {})
        if failing:
            failures += 1
            first = failing[0]
            more = f" (+{len(failing) - 1} more)" if len(failing) > 1 else ""
            fail = ET.SubElement(case, "failure", message=first.message + more, type=first.severity.value)
            fail.text = "\n\n".join(_finding_text(f) for f in failing)
        elif rule_cfg.get("enabled") is False:
            skipped += 1
            ET.SubElement(case, "skipped", message="disabled in the config")
        if other:
            ET.SubElement(case, "system-out").text = "\n\n".join(_finding_text(f) for f in other)
    ts.set("tests", str(len(RULES)))
    ts.set("failures", str(failures))
    ts.set("errors", "0")
    ts.set("skipped", str(skipped))
    ts.set("time", f"{total:.3f}")
    return ts


def _suite_for_error(e: ModelError) -> ET.Element:
    err = e.error
    ts = ET.Element("testsuite", name=str(e.spec), tests="1", failures="0", errors="1", skipped="0", time="0.000")
    case = ET.SubElement(ts, "testcase", classname=f"gradcheck.{e.spec}", name="check", time="0")
    where = f" in {err['where']}" if err.get("where") else ""
    node = ET.SubElement(case, "error", message=err["message"], type=f"{err['type']}:{err['phase']}")
    node.text = (f"{err['type']} error during {err['phase']}{where}: {err['message']}"
                 + (f"\nhint: {err['hint']}" if err.get("hint") else "") + f"\nexit {err['exit_code']}")
    return ts


def junit_tree(suite: Suite) -> ET.Element:
    root = ET.Element("testsuites", name="gradcheck")
    children = [_suite_for_report(r) for r in suite.reports] + [_suite_for_error(e) for e in suite.errors]
    for key in ("tests", "failures", "errors", "skipped"):
        root.set(key, str(sum(int(c.get(key, "0")) for c in children)))
    root.set("time", f"{sum(float(c.get('time', '0')) for c in children):.3f}")
    root.extend(children)
    return root


def render(suite: Suite, out: TextIO, **_: object) -> None:
    root = escape.xml_tree(junit_tree(suite))   # user text: only characters XML can hold
    ET.indent(root)
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
    out.write(ET.tostring(root, encoding="unicode"))
    out.write("\n")
