"""Findings and the finished report: plain data, no torch."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from gradcheck_cli import __version__
from gradcheck_cli.choices import FAIL_ON

SCHEMA_VERSION = 1


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"info": 1, "warning": 2, "error": 3}[self.value]


class _FailOnValue(str):
    def threshold(self) -> int | None:
        return None if self.value == "never" else Severity(self.value).rank


# The lowest severity that makes `gradcheck check` exit 1 (values from gradcheck_cli.choices.FAIL_ON).
FailOn = Enum("FailOn", [(v.upper(), v) for v in FAIL_ON], type=_FailOnValue, module=__name__)


@dataclass
class Finding:
    rule: str                       # kebab-case rule id, e.g. "vanishing-gradients"
    code: str                       # short code, e.g. "GC101"
    severity: Severity
    layer: str | None               # qualified module name, or None for model-wide findings
    message: str                    # one sentence
    evidence: dict[str, Any] = field(default_factory=dict)
    fixes: list[str] = field(default_factory=list)
    # Where the offending layer is defined: {"file": path relative to the working directory, "line": n}.
    location: dict[str, Any] | None = None
    # Set when the finding does not count toward the exit code:
    # {"by": "baseline" | "ignore", "reason": str}.
    suppressed: dict[str, Any] | None = None
    # Every layer the finding covers (`layer` first), e.g. all the saturated layers, not only the first.
    layers: list[str] = field(default_factory=list)
    # --verify-fixes: one entry per fix, in the order of `fixes` (docs/json-schema.md); None: not verified
    verification: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if not self.layers and self.layer is not None:
            self.layers = [self.layer]

    @property
    def active(self) -> bool:
        return self.suppressed is None

    def to_dict(self) -> dict[str, Any]:
        """JSON: plain text (the `code` spans of message and fixes lose their Markdown backticks)."""
        d = asdict(self)
        d["severity"] = self.severity.value
        d["message"] = plain_text(self.message)
        d["fixes"] = [plain_text(x) for x in self.fixes]
        if self.verification is None:
            del d["verification"]
        return d


def plain_text(text: str) -> str:
    """Rule messages mark names as `code` (Markdown and HTML render it); machine formats get the text alone."""
    return re.sub(r"`([^`]+)`", r"\1", text)


@dataclass
class Report:
    tool_version: str
    model: dict[str, Any]
    settings: dict[str, Any]
    layers: list[dict[str, Any]]
    run: dict[str, Any]
    findings: list[Finding]
    fail_on: FailOn
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    training: dict[str, Any] | None = None   # the training rehearsal (--train-steps), see training_summary

    def counts(self) -> dict[str, int]:
        """Findings that count (not suppressed by a baseline or an ignore), by severity."""
        return _counts(self.findings)

    def active_findings(self) -> list[Finding]:
        return [f for f in self.sorted_findings() if f.active]

    def suppressed_findings(self) -> list[Finding]:
        return [f for f in self.sorted_findings() if not f.active]

    def flagged_layers(self) -> dict[str, list[str]]:
        """Layer name -> codes of the findings that count and cover it (renderers mark these layers)."""
        out: dict[str, list[str]] = {}
        for f in self.active_findings():
            for name in f.layers:
                if f.code not in out.setdefault(name, []):
                    out[name].append(f.code)
        return out

    @property
    def distribution(self) -> str | None:
        """How the run was distributed, for headers: "2 ranks (gloo, fsdp)"; None for one process."""
        d = self.run.get("distributed") if isinstance(self.run, dict) else None
        if not d:
            return None
        n = d.get("world_size")
        return f"{n} rank{'s' if n != 1 else ''} ({d.get('backend')}, {d.get('strategy')})"

    def failing(self) -> list[Finding]:
        t = self.fail_on.threshold()
        return [] if t is None else [f for f in self.findings if f.active and f.severity.rank >= t]

    @property
    def exit_code(self) -> int:
        return 1 if self.failing() else 0

    @property
    def verdict(self) -> str:
        return "fail" if self.failing() else "pass"

    def sorted_findings(self) -> list[Finding]:
        return sorted(self.findings, key=lambda f: (-f.severity.rank, f.code, f.layer or ""))

    def to_dict(self) -> dict[str, Any]:
        return _json_safe({
            "schema_version": self.schema_version,
            "tool": {"name": "gradcheck", "version": self.tool_version},
            "model": self.model,
            "settings": self.settings,
            "run": self.run,
            "layers": self.layers,
            "findings": [f.to_dict() for f in self.sorted_findings()],
            "notes": self.notes,
            "summary": {
                "counts": self.counts(),
                "suppressed": len(self.suppressed_findings()),
                "fail_on": self.fail_on.value,
                "verdict": self.verdict,
                "exit_code": self.exit_code,
            },
            "timings": self.timings,
            **({"training": self.training} if self.training is not None else {}),
        })


def _counts(findings: list[Finding]) -> dict[str, int]:
    out = {s.value: 0 for s in Severity}
    for f in findings:
        if f.active:
            out[f.severity.value] += 1
    return out


@dataclass
class ModelError:
    """A model of a run that could not be checked (exit 2, 3 or 4), and why."""

    spec: str | None
    error: dict[str, Any]    # type, phase, message, where, hint, exit_code

    @property
    def exit_code(self) -> int:
        return int(self.error["exit_code"])


@dataclass
class Suite:
    """Everything one `gradcheck check` produced: a report per model checked, the models that could not
    be checked, and what a baseline suppressed. Renderers take this (a lone Report is wrapped in one)."""

    reports: list[Report]
    errors: list[ModelError] = field(default_factory=list)
    fail_on: FailOn = FailOn.WARNING
    baseline: dict[str, Any] | None = None   # {"path", "suppressed", "resolved": [entries no longer found]}

    @classmethod
    def of(cls, obj: "Report | Suite") -> "Suite":
        return obj if isinstance(obj, Suite) else cls(reports=[obj], fail_on=obj.fail_on)

    @property
    def single(self) -> bool:
        return len(self.reports) + len(self.errors) == 1

    def findings(self) -> list[Finding]:
        return [f for r in self.reports for f in r.findings]

    def counts(self) -> dict[str, int]:
        return _counts(self.findings())

    @property
    def exit_code(self) -> int:
        """The highest of the models' codes: a model that could not be checked (2-4) outranks findings (1)."""
        return max([r.exit_code for r in self.reports] + [e.exit_code for e in self.errors] + [0])

    @property
    def verdict(self) -> str:
        if self.errors:
            return "error"
        return "fail" if self.exit_code else "pass"

    def to_dict(self) -> dict[str, Any]:
        """One model: that model's report (or error document), unchanged. Several: a combined document."""
        if self.single and self.reports:
            d = self.reports[0].to_dict()
            if self.baseline is not None:
                d["baseline"] = _json_safe(self.baseline)
            return d
        if self.single:
            return error_document(self.errors[0].error, self.errors[0].spec)
        return _json_safe({
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "gradcheck", "version": __version__},
            "reports": [r.to_dict() for r in self.reports],
            "errors": [{"model": {"spec": e.spec}, "error": e.error} for e in self.errors],
            "baseline": self.baseline,
            "summary": {
                "models": len(self.reports) + len(self.errors),
                "counts": self.counts(),
                "suppressed": sum(1 for f in self.findings() if not f.active),
                "fail_on": self.fail_on.value,
                "verdict": self.verdict,
                "exit_code": self.exit_code,
            },
        })


def error_document(error: dict[str, Any], model_spec: str | None) -> dict[str, Any]:
    """The JSON written when a run ends with exit 2, 3 or 4: why, and nothing measured."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "gradcheck", "version": __version__},
        "model": {"spec": model_spec},
        "error": error,
        "layers": [],
        "findings": [],
        "summary": {"counts": {"error": 0, "warning": 0, "info": 0}, "verdict": "error",
                    "exit_code": error["exit_code"]},
    }


def _json_safe(obj: Any) -> Any:
    """Non-finite floats become the strings "NaN", "Infinity", "-Infinity" (JSON has no such numbers)."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return "NaN"
        if math.isinf(obj):
            return "Infinity" if obj > 0 else "-Infinity"
        return obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Enum):
        return obj.value
    return obj
