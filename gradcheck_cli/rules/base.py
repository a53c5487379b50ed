"""What a rule is: id, code, default severity, options, and a docstring that is its documentation.

Rules are pure functions of `stats.RunStats` (no torch, no printing) returning `Finding`s.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from gradcheck_cli.findings import Finding, Severity
from gradcheck_cli.stats import RunStats

SECTIONS = ("What it does", "Why it matters", "Example", "Fix", "References")


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    help: str
    maximum: float | None = None

    def coerce(self, value: Any) -> Any:
        """Validate a configured value against the default's type; ValueError names what is allowed."""
        kind = type(self.default)
        if kind is bool:
            if isinstance(value, bool):
                return value
            raise ValueError("expected true or false")
        if kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                if value < 0:
                    raise ValueError("expected a non-negative integer")
                return value
            raise ValueError("expected an integer")
        if kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if value < 0:
                    raise ValueError("expected a non-negative number")
                if self.maximum is not None and value > self.maximum:
                    raise ValueError(f"expected a number no greater than {self.maximum:g}")
                return float(value)
            raise ValueError("expected a number")
        return value


@dataclass
class Rule:
    id: str                     # kebab-case, stable: used in config, JSON `rule`, `gradcheck explain`
    code: str                   # short stable code, e.g. GC101
    severity: Severity          # default severity
    options: tuple[Option, ...]
    check_fn: Callable[[RunStats, dict[str, Any], "Rule"], list[Finding]]
    doc: str = field(repr=False)

    @property
    def summary(self) -> str:
        return self.doc.strip().splitlines()[0].strip()

    def sections(self) -> dict[str, str]:
        """The docstring's sections, keyed by heading (What it does, Why it matters, ...)."""
        out: dict[str, str] = {}
        current = None
        for line in self.doc.splitlines()[1:]:
            m = re.match(r"^(%s):\s*$" % "|".join(SECTIONS), line.strip())
            if m:
                current = m.group(1)
                out[current] = ""
            elif current:
                out[current] += line + "\n"
        return {k: v.strip("\n") for k, v in out.items()}

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def check(self, stats: RunStats, options: dict[str, Any] | None = None) -> list[Finding]:
        opts = self.defaults()
        opts.update(options or {})
        return self.check_fn(stats, opts, self)

    def finding(self, layer: str | None, message: str, evidence: dict[str, Any], fixes: list[str],
                severity: Severity | None = None, covers: list[str] | None = None) -> Finding:
        """`covers`: every layer the finding is about (default: `layer`), so each gets a marker."""
        layers = list(dict.fromkeys(([layer] if layer is not None else []) + list(covers or [])))
        return Finding(rule=self.id, code=self.code, severity=severity or self.severity, layer=layer,
                       message=message, evidence=evidence, fixes=fixes, layers=layers)


def rule(id: str, code: str, severity: Severity, options: tuple[Option, ...] = ()) -> Callable:
    def deco(fn: Callable) -> Rule:
        return Rule(id=id, code=code, severity=severity, options=options, check_fn=fn,
                    doc=inspect.cleandoc(fn.__doc__ or ""))
    return deco
