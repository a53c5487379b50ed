"""GitHub Actions workflow commands (::error / ::warning / ::notice) for findings.

Printed by `gradcheck check` when GITHUB_ACTIONS=true, so findings show up as annotations on the run and
on the pull request's changed files (at the line that defines the offending layer). Suppressed findings
are not annotated; a model that could not be checked is an ::error.
"""

from __future__ import annotations

from gradcheck_cli.findings import Severity, Suite
from gradcheck_cli.report import escape

COMMANDS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


escape_data = escape.gh_data
escape_property = escape.gh_property


def _command(kind: str, message: str, title: str, file: str | None = None, line: int | None = None) -> str:
    props = []
    if file:
        props.append(f"file={escape_property(file)}")
        if line:
            props.append(f"line={int(line)}")
    props.append(f"title={escape_property(title)}")
    return f"::{kind} {','.join(props)}::{escape_data(message)}"


def annotations(suite: Suite) -> list[str]:
    out = []
    for report in suite.reports:
        spec = report.model["spec"]
        for f in report.active_findings():
            where = f.location or report.model.get("source") or {}
            layer = f" at {f.layer or '(model)'}" if f.layer is not None else ""
            message = f.message + (f"\nFix: {f.fixes[0]}" if f.fixes else "")
            title = f"gradcheck {f.code} {f.rule}{layer} ({spec})"
            out.append(_command(COMMANDS[f.severity], message, title, where.get("file"), where.get("line")))
    for e in suite.errors:
        err = e.error
        out.append(_command("error", f"{err['type']} error during {err['phase']}: {err['message']}"
                            + (f" ({err['hint']})" if err.get("hint") else ""), f"gradcheck could not check {e.spec}"))
    return out
