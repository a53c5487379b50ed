"""Findings and the finished report: plain data, no torch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

SCHEMA_VERSION = 1


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"info": 1, "warning": 2, "error": 3}[self.value]


class FailOn(str, Enum):
    """The lowest severity that makes `gradcheck check` exit 1."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    NEVER = "never"

    def threshold(self) -> int | None:
        return None if self is FailOn.NEVER else Severity(self.value).rank


@dataclass
class Finding:
    rule: str                       # kebab-case rule id, e.g. "vanishing-gradients"
    code: str                       # short code, e.g. "GC101"
    severity: Severity
    layer: str | None               # qualified module name, or None for model-wide findings
    message: str                    # one sentence
    evidence: dict[str, Any] = field(default_factory=dict)
    fixes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["severity"] = self.severity.value
        return d


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

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Severity}
        for f in self.findings:
            out[f.severity.value] += 1
        return out

    def failing(self) -> list[Finding]:
        t = self.fail_on.threshold()
        return [] if t is None else [f for f in self.findings if f.severity.rank >= t]

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
                "fail_on": self.fail_on.value,
                "verdict": self.verdict,
                "exit_code": self.exit_code,
            },
            "timings": self.timings,
        })


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
