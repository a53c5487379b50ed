"""Settings: defaults, then gradcheck.yaml (or --config), then command-line flags. Validated strictly.

Errors name the file, the key and the allowed values, e.g.
    gradcheck.yaml: key 'rules.dead-relus.fraction': expected a number (got 'high')
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradcheck_cli.errors import InputError
from gradcheck_cli.findings import FailOn, Severity

DEFAULT_CONFIG_NAME = "gradcheck.yaml"
FORMATS = ("text", "json")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class RuleSettings:
    enabled: bool = True
    severity: Severity | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Settings:
    model: str
    batch: str | None = None
    loss: str | None = None
    input_shape: tuple[int, ...] | None = None
    steps: int = 3
    seed: int = 0
    device: str = "auto"
    fail_on: FailOn = FailOn.WARNING
    format: str = "text"
    output: str | None = None
    max_rows: int = 40
    timeout: float | None = None
    rules: dict[str, RuleSettings] = field(default_factory=dict)
    config_path: str | None = None


class ConfigError(InputError):
    def __init__(self, path: str, key: str, problem: str, hint: str | None = None):
        super().__init__(f"{path}: key '{key}': {problem}", hint=hint)


def _suggest(key: str, allowed: list[str]) -> str | None:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f"did you mean '{close[0]}'? allowed: {', '.join(allowed)}" if close else f"allowed: {', '.join(allowed)}"


def _int(path: str, key: str, v: Any, minimum: int | None = None) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError(path, key, f"expected an integer (got {v!r})")
    if minimum is not None and v < minimum:
        raise ConfigError(path, key, f"must be at least {minimum} (got {v})")
    return v


def _positive(path: str, key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(path, key, f"expected a number of seconds (got {v!r})")
    if v <= 0:
        raise ConfigError(path, key, f"must be greater than 0 (got {v})")
    return float(v)


def _choice(path: str, key: str, v: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in allowed:
        raise ConfigError(path, key, f"expected one of {', '.join(allowed)} (got {v!r})")
    return v


def _str(path: str, key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(path, key, f"expected a non-empty string (got {v!r})")
    return v


def _shape(path: str, key: str, v: Any) -> tuple[int, ...]:
    from gradcheck_cli.batches_shape import parse_shape

    if isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v) and v:
        return tuple(v)
    if isinstance(v, str):
        try:
            return parse_shape(v)
        except InputError:
            pass
    raise ConfigError(path, key, f"expected a list of positive integers or '8,3,32,32' (got {v!r})")


TOP_KEYS: dict[str, Any] = {
    "steps": lambda p, k, v: _int(p, k, v, 1),
    "seed": lambda p, k, v: _int(p, k, v, 0),
    "fail_on": lambda p, k, v: FailOn(_choice(p, k, v, tuple(f.value for f in FailOn))),
    "input_shape": _shape,
    "batch": _str,
    "loss": _str,
    "device": lambda p, k, v: _choice(p, k, v, DEVICES),
    "format": lambda p, k, v: _choice(p, k, v, FORMATS),
    "output": _str,
    "max_rows": lambda p, k, v: _int(p, k, v, 0),
    "timeout": lambda p, k, v: _positive(p, k, v),
    "rules": None,   # validated below
}


def load_config(path: Path) -> dict[str, Any]:
    """Read and validate a config file; returns {key: value} with rules as {rule_id: RuleSettings}."""
    import yaml

    from gradcheck_cli.rules import RULES, get_rule

    p = str(path)
    if not path.exists():
        raise InputError(f"config file not found: {p}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read config file {p}: {exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{p}: YAML syntax error{where}: {problem}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise InputError(f"{p}: the top level must be a mapping of settings (got {type(doc).__name__})")
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key not in TOP_KEYS:
            raise ConfigError(p, str(key), "unknown key", hint=_suggest(str(key), list(TOP_KEYS)))
        if key == "rules":
            out["rules"] = _rules(p, value, RULES, get_rule)
        else:
            out[key] = TOP_KEYS[key](p, key, value)
    return out


def _rules(p: str, value: Any, rules: Any, get_rule: Any) -> dict[str, RuleSettings]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(p, "rules", "expected a mapping of rule id to settings")
    out: dict[str, RuleSettings] = {}
    ids = [r.id for r in rules]
    for rid, body in value.items():
        r = get_rule(str(rid))
        if r is None:
            raise ConfigError(p, f"rules.{rid}", "unknown rule", hint=_suggest(str(rid), ids))
        rs = RuleSettings()
        if body is None:
            body = {}
        if isinstance(body, bool):
            body = {"enabled": body}
        if not isinstance(body, dict):
            raise ConfigError(p, f"rules.{rid}", "expected a mapping (enabled, severity, options)")
        allowed = ["enabled", "severity"] + [o.name for o in r.options]
        for k, v in body.items():
            key = f"rules.{rid}.{k}"
            if k == "enabled":
                if not isinstance(v, bool):
                    raise ConfigError(p, key, f"expected true or false (got {v!r})")
                rs.enabled = v
            elif k == "severity":
                rs.severity = Severity(_choice(p, key, v, tuple(s.value for s in Severity)))
            else:
                opt = next((o for o in r.options if o.name == k), None)
                if opt is None:
                    raise ConfigError(p, key, "unknown option", hint=_suggest(str(k), allowed))
                try:
                    rs.options[k] = opt.coerce(v)
                except ValueError as exc:
                    raise ConfigError(p, key, f"{exc} (got {v!r})") from None
        out[r.id] = rs
    return out


def load_rules_mapping(rules: dict[str, Any], source: str) -> dict[str, RuleSettings]:
    """Validate per-rule settings given in code (the Python API), with the config file's checks."""
    from gradcheck_cli.rules import RULES, get_rule

    return _rules(source, rules, RULES, get_rule)


def resolve(cli: dict[str, Any], config_path: Path | None, cwd: Path | None = None) -> Settings:
    """Defaults < config file < flags given on the command line (None means 'not given')."""
    cwd = cwd or Path.cwd()
    path = config_path
    if path is None and (cwd / DEFAULT_CONFIG_NAME).exists():
        path = cwd / DEFAULT_CONFIG_NAME
    file_values = load_config(path) if path is not None else {}
    s = Settings(model=cli["model"])
    for key, value in file_values.items():
        setattr(s, key, value)
    for key, value in cli.items():
        if key != "model" and value is not None:
            setattr(s, key, value)
    s.config_path = str(path) if path is not None else None
    return s
