"""--verify-fixes in every format: the phrases for one verification entry (finding.verification[i]), shared
by the text, Markdown, SARIF, JUnit and HTML renderers so they say the same thing. Plain strings; each
renderer escapes them for its format."""

from __future__ import annotations

import math
from typing import Any

from gradcheck_cli.numbers import fmt

FRACTIONS = ("saturated_fraction", "dead_units", "died_fraction")
COUNTS = ("nonfinite_loss_steps", "parameters", "upstream_parameters", "params_not_in_optimizer", "spike_steps",
          "nonfinite_training")
LABELS = {
    "early_late_ratio": "early/late |dL/dy|", "time_grad_ratio": "earliest/latest step gradient",
    "total_grad_norm": "global gradient norm", "nonfinite_loss_steps": "NaN/Inf loss steps",
    "saturated_fraction": "saturated", "dead_units": "dead units", "parameters": "unused parameters",
    "upstream_parameters": "parameters without gradient", "ratio": "step-0 loss / ln C",
    "rise": "peak loss / step-0 loss", "median_large_update_ratio": "|update|/|weight|",
    "median_update_ratio": "|update|/|weight|", "spike_steps": "gradient-norm spikes",
    "died_fraction": "units died in training", "nonfinite_training": "NaN/Inf in training",
    "amplitude_growth": "loss swing growth", "params_not_in_optimizer": "parameters not in the optimizer",
}

VERIFIED = "✓"
NOT_RESOLVED = "✗"


def number(metric: str | None, value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):   # JSON's "Infinity"/"NaN"
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if metric in FRACTIONS:
        return f"{100 * value:.0f}%"
    if metric in COUNTS:
        return f"{int(round(value)):,}"
    return fmt(value)


def before_after(v: dict[str, Any]) -> str:
    """"early/late |dL/dy| 1.16e-07 -> 0.504"; "" without a key number."""
    m = v.get("metric")
    if m is None:
        return ""
    return f"{LABELS.get(m, m)} {number(m, v.get('before'))} -> {number(m, v.get('after'))}"


def status(v: dict[str, Any]) -> str:
    """"verified", "not resolved", "not verified"."""
    if v.get("change") is None:
        return "not verified"
    return "verified" if v.get("resolved") else "not resolved"


def new_phrase(v: dict[str, Any]) -> str:
    new = v.get("new_findings") or []
    return f"new: {', '.join(new)}" if new else ""


def mark(v: dict[str, Any]) -> str:
    if v.get("change") is None:
        return "·"
    return VERIFIED if v.get("resolved") else NOT_RESOLVED


def headline(v: dict[str, Any]) -> str:
    """One line: "✓ verified: early/late |dL/dy| 1.16e-07 -> 0.504; new: initial-loss" or
    "· not verified: <reason>"."""
    if v.get("change") is None:
        return f"· not verified: {v.get('reason') or 'no change gradcheck can make'}"
    if v.get("error"):
        return f"{NOT_RESOLVED} not resolved: the changed copy failed to run: {v['error']}"
    rest = "; ".join(x for x in (before_after(v), new_phrase(v)) if x)
    return f"{mark(v)} {status(v)}" + (f": {rest}" if rest else "")


def one_line(v: dict[str, Any]) -> str:
    """headline and the change, for messages (SARIF, JUnit, Markdown)."""
    if v.get("change") is None:
        return headline(v)
    return f"{headline(v)} (changed: {v['change']})"


def by_fix(verification: list[dict[str, Any]] | None) -> dict[int, dict[str, Any]]:
    return {v["fix"]: v for v in verification or [] if isinstance(v.get("fix"), int)}


def first_fix_phrase(verification: list[dict[str, Any]] | None) -> str | None:
    """The first fix's verification, for messages that show one fix."""
    v = by_fix(verification).get(0)
    return one_line(v) if v is not None else None
