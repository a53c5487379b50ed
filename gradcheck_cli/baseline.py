"""Baselines and ignores: which findings count toward the exit code.

A baseline file records the findings of a run (`--write-baseline`); with `--baseline`, a finding that is
in it and not worse is suppressed, so only new or worsened findings fail the gate. "Worse" means a
higher severity, or the rule's key number moved the bad way by more than a tolerance (a factor of 2 for
ratios and norms, 5 percentage points for fractions, any increase for counts). Ignores come from the
config (`ignore:` entries with a rule and/or layer glob and a required reason). Plain data, no torch.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradcheck_cli import __version__
from gradcheck_cli.errors import InputError
from gradcheck_cli.findings import Finding, Report, Severity, Suite
from gradcheck_cli.wrappers import strip_prefix

BASELINE_KIND = "gradcheck-baseline"
BASELINE_VERSION = 1
RATIO_FACTOR = 2.0
FRACTION_TOLERANCE = 0.05

# rule code -> ordered (evidence key, direction, kind): the first key present is the finding's number.
# direction +1: larger is worse; -1: smaller is worse.
METRICS: dict[str, tuple[tuple[str, int, str], ...]] = {
    "GC101": (("early_late_ratio", -1, "ratio"), ("time_grad_ratio", -1, "ratio")),
    "GC102": (("early_late_ratio", +1, "ratio"), ("time_grad_ratio", +1, "ratio"), ("total_grad_norm", +1, "ratio")),
    "GC103": (("nonfinite_loss_steps", +1, "count"),),
    "GC104": (("saturated_fraction", +1, "fraction"),),
    "GC105": (("dead_units", +1, "fraction"),),
    "GC106": (("parameters", +1, "count"),),
    "GC107": (("ratio", +1, "ratio"),),
    "GC110": (("rise", +1, "ratio"), ("amplitude_growth", +1, "ratio")),
}

# Evidence keys renamed since baselines were first written (they collided with the rules' option names).
RENAMED_METRICS = {"ratio": "early_late_ratio", "time_ratio": "time_grad_ratio"}


@dataclass(frozen=True)
class Ignore:
    reason: str
    rule: str | None = None      # rule id (codes are mapped to ids when the config is read)
    layer: str | None = None     # fnmatch glob on the layer name ("" or "(model)" for the model itself)
    model: str | None = None     # fnmatch glob on the model spec

    def matches(self, f: Finding, spec: str) -> bool:
        if self.rule is not None and f.rule != self.rule:
            return False
        if self.layer is not None:
            # A glob written against a wrapped model's names (`_orig_mod.fc*`, `module.encoder.*`) also
            # matches: gradcheck reports the wrapped model's own names.
            name = f.layer or "(model)"
            globs = {self.layer, strip_prefix(self.layer) or "(model)"}
            if not any(fnmatch.fnmatchcase(name, g) for g in globs):
                return False
        if self.model is not None and not fnmatch.fnmatchcase(normalize_spec(spec), normalize_spec(self.model)):
            return False
        return True


def apply_ignores(report: Report, ignores: list[Ignore]) -> None:
    for f in report.findings:
        if f.suppressed is None:
            for ig in ignores:
                if ig.matches(f, report.model["spec"]):
                    f.suppressed = {"by": "ignore", "reason": ig.reason}
                    break


def normalize_spec(spec: str | None) -> str:
    """'./examples/x.py:build' and 'examples/x.py:build' are the same model."""
    if not spec:
        return str(spec)
    target, sep, name = spec.rpartition(":")
    if sep and (target.endswith(".py") or "/" in target or "\\" in target):
        return os.path.normpath(target).replace("\\", "/") + ":" + name
    return spec


def metric(f: Finding) -> tuple[str, float, int, str] | None:
    """(name, value, direction, kind) of the finding's key number, or None."""
    for key, direction, kind in METRICS.get(f.code, ()):
        v = f.evidence.get(key)
        if isinstance(v, dict):   # per-layer fractions: the worst one
            vals = [(x["dead"] / x["units"] if isinstance(x, dict) and x.get("units") else x) for x in v.values()]
            vals = [x for x in vals if isinstance(x, (int, float))]
            v = max(vals) if vals else None
        elif isinstance(v, list):
            v = len(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return key, float(v), direction, kind
    return None


def _key(spec: str, code: str, layer: str | None, metric_name: str | None) -> tuple:
    # Layer names without torch.compile / DDP prefixes, so a baseline written with them still applies.
    return (normalize_spec(spec), code, strip_prefix(layer) or None if layer is not None else None, metric_name)


def entry(spec: str, f: Finding) -> dict[str, Any]:
    m = metric(f)
    return {"model": normalize_spec(spec), "code": f.code, "rule": f.rule, "layer": f.layer,
            "severity": f.severity.value, "metric": None if m is None else {"name": m[0], "value": _num(m[1])},
            "message": f.message}


def _num(v: float) -> Any:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


def _float(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(v) if isinstance(v, str) else None


def baseline_document(suite: Suite) -> dict[str, Any]:
    """Every finding that counts (ignored ones are not recorded), sorted; no timestamps."""
    entries = [entry(r.model["spec"], f) for r in suite.reports for f in r.findings
               if not (f.suppressed and f.suppressed["by"] == "ignore")]
    entries.sort(key=lambda e: (e["model"], e["code"], e["layer"] or "", (e["metric"] or {}).get("name") or ""))
    return {"kind": BASELINE_KIND, "schema_version": BASELINE_VERSION, "tool_version": __version__,
            "findings": entries}


def write_baseline(suite: Suite, path: Path) -> list[dict[str, Any]]:
    """Write the baseline atomically; returns its entries."""
    from gradcheck_cli.report import _atomic_write

    doc = baseline_document(suite)
    _atomic_write(path, lambda fh: fh.write(json.dumps(doc, indent=2, allow_nan=False) + "\n"))
    return doc["findings"]


def read_baseline(path: Path) -> list[dict[str, Any]]:
    from gradcheck_cli.paths import MAX_BASELINE_BYTES, input_file, read_text

    input_file(path, "baseline", max_bytes=MAX_BASELINE_BYTES,
               not_found_hint="create it with --write-baseline PATH, or check the path")
    try:
        doc = json.loads(read_text(path, "baseline", MAX_BASELINE_BYTES))
    except (ValueError, RecursionError) as exc:
        raise InputError(f"cannot read baseline {path}: {exc}", hint="re-create it with --write-baseline") from None
    if not isinstance(doc, dict) or doc.get("kind") != BASELINE_KIND or not isinstance(doc.get("findings"), list):
        raise InputError(f"{path} is not a gradcheck baseline (expected kind: {BASELINE_KIND})",
                         hint="create one with --write-baseline PATH")
    if doc.get("schema_version") != BASELINE_VERSION:
        raise InputError(f"{path}: baseline schema_version {doc.get('schema_version')!r} is not supported "
                         f"(expected {BASELINE_VERSION})", hint="re-create it with --write-baseline")
    for i, e in enumerate(doc["findings"]):
        if not isinstance(e, dict) or not all(k in e for k in ("model", "code", "layer", "severity")) \
                or e["severity"] not in [s.value for s in Severity]:
            raise InputError(f"{path}: findings[{i}] is malformed (needs model, code, layer, severity)",
                             hint="re-create it with --write-baseline")
        metric_ = e.get("metric")
        if isinstance(metric_, dict) and metric_.get("name") in RENAMED_METRICS:
            metric_["name"] = RENAMED_METRICS[metric_["name"]]
    return doc["findings"]


def _worse(f: Finding, old: dict[str, Any]) -> str | None:
    """Why `f` is worse than its baseline entry, or None."""
    was = Severity(old["severity"])
    if f.severity.rank > was.rank:
        return f"severity {was.value} → {f.severity.value}"
    m = metric(f)
    om = old.get("metric") or {}
    prev = _float(om.get("value"))
    if m is None or prev is None or om.get("name") != m[0]:
        return None
    name, now, direction, kind = m
    if math.isnan(now) and not math.isnan(prev):
        return f"{name} {prev:.3g} → NaN"
    if kind == "ratio":
        if prev == 0 or math.isnan(prev):
            return None
        factor = now / prev if direction > 0 else (prev / now if now else math.inf)
        worse = factor > RATIO_FACTOR
    elif kind == "fraction":
        worse = (now - prev) * direction > FRACTION_TOLERANCE
    else:
        worse = (now - prev) * direction > 0
    return f"{name} {prev:.3g} → {now:.3g}" if worse else None


def apply_baseline(suite: Suite, entries: list[dict[str, Any]], path: str) -> None:
    """Suppress findings that are in the baseline and not worse; note worsened ones; list resolved entries."""
    index: dict[tuple, dict[str, Any]] = {}
    for e in entries:
        index[_key(e["model"], e["code"], e["layer"], (e.get("metric") or {}).get("name"))] = e
    seen: set[tuple] = set()
    suppressed = 0
    for report in suite.reports:
        for f in report.findings:
            if f.suppressed is not None:
                continue
            m = metric(f)
            k = _key(report.model["spec"], f.code, f.layer, m[0] if m else None)
            old = index.get(k)
            if old is None:
                continue
            seen.add(k)
            why = _worse(f, old)
            if why is None:
                f.suppressed = {"by": "baseline", "reason": f"known in {path}"}
                suppressed += 1
            else:
                f.evidence["baseline"] = {"severity": old["severity"], **(old.get("metric") or {})}
                report.notes.append(f"{f.code} {f.rule} at {f.layer or '(model)'} is worse than in the baseline "
                                    f"({why}), so it counts.")
    checked = {normalize_spec(r.model["spec"]) for r in suite.reports}
    resolved = [{"model": k[0], "code": k[1], "layer": k[2]} for k, e in index.items()
                if k not in seen and k[0] in checked]
    suite.baseline = {"path": path, "suppressed": suppressed, "resolved": resolved}
