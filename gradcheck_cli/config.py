"""Settings: defaults, then gradcheck.yaml (or --config), then command-line flags. Validated strictly.

Errors name the file, the key and the allowed values, e.g.
    gradcheck.yaml: key 'rules.dead-relus.fraction': expected a number (got 'high')
Here: the Settings, the keys a file and a `models:` entry may set, per-rule settings, ignores, and the
precedence; config_values.py checks each value, config_yaml.py reads the YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradcheck_cli import config_values as V
from gradcheck_cli.choices import DEVICES, FAIL_ON, FORMATS, PRECISIONS
from gradcheck_cli.config_values import ConfigError
from gradcheck_cli.config_yaml import parse_yaml
from gradcheck_cli.errors import InputError
from gradcheck_cli.findings import FailOn, Severity

DEFAULT_CONFIG_NAME = "gradcheck.yaml"


@dataclass
class RuleSettings:
    enabled: bool = True
    severity: Severity | None = None
    options: dict[str, Any] = field(default_factory=dict)
    given: set[str] = field(default_factory=set, compare=False)   # keys set explicitly ("enabled", "severity")

    def merged_over(self, base: "RuleSettings") -> "RuleSettings":
        """These settings on top of `base` (a per-model entry over the top-level rules): options merge
        key by key, and enabled/severity replace the base's only where this entry sets them."""
        return RuleSettings(
            enabled=self.enabled if "enabled" in self.given else base.enabled,
            severity=self.severity if "severity" in self.given else base.severity,
            options={**base.options, **self.options},
            given=base.given | self.given,
        )


@dataclass
class Settings:
    model: str | None
    batch: str | None = None
    loss: str | None = None
    input_shape: tuple[int, ...] | None = None
    steps: int = 3
    seed: int = 0
    device: str = "auto"
    fail_on: FailOn = FailOn.WARNING
    format: str = "text"
    outputs: list[str] = field(default_factory=list)   # "PATH" or "FORMAT:PATH", see report.parse_output
    max_rows: int = 40
    timeout: float | None = None
    train_steps: int = 0                 # --train-steps: the training rehearsal (0: the check alone)
    optimizer: str = "adam"              # sgd | adam | adamw | FILE.py:NAME | pkg.mod:NAME
    lr: float | None = None              # default per built-in optimizer (measure/optim.DEFAULT_LR)
    precision: str = "fp32"              # fp32 | bf16 | fp16
    verify_fixes: str = "off"            # --verify-fixes: off | failing | all (gradcheck_cli/verify.py)
    rules: dict[str, RuleSettings] = field(default_factory=dict)
    ignore: list[Any] = field(default_factory=list)      # baseline.Ignore entries
    baseline: str | None = None
    models: list[dict[str, Any]] = field(default_factory=list)   # validated `models:` entries
    config_path: str | None = None
    cli_given: set[str] = field(default_factory=set)   # settings given as flags (they win over the config)


TOP_KEYS: dict[str, Any] = {
    "steps": lambda p, k, v: V.integer(p, k, v, 1, V.MAX_STEPS),
    "seed": lambda p, k, v: V.integer(p, k, v, 0, V.MAX_SEED),
    "fail_on": lambda p, k, v: FailOn(V.choice(p, k, v, FAIL_ON)),
    "input_shape": V.shape,
    "batch": V.string,
    "loss": V.string,
    "device": lambda p, k, v: V.choice(p, k, v, DEVICES),
    "format": lambda p, k, v: V.choice(p, k, v, FORMATS),
    "output": lambda p, k, v: V.outputs(p, k, v),
    "baseline": V.string,
    "max_rows": lambda p, k, v: V.integer(p, k, v, 0),
    "timeout": lambda p, k, v: V.seconds(p, k, v),
    "train_steps": lambda p, k, v: V.integer(p, k, v, 0),
    "optimizer": lambda p, k, v: V.optimizer(p, k, v),
    "lr": lambda p, k, v: V.learning_rate(p, k, v),
    "precision": lambda p, k, v: V.choice(p, k, v, PRECISIONS),
    "verify_fixes": lambda p, k, v: V.verify_mode(p, k, v),
    "rules": None,   # validated below
    "ignore": None,
    "models": None,
}
# What one entry of `models:` may set; the rest (format, output, fail_on, ...) is for the whole run.
MODEL_KEYS = ("model", "batch", "loss", "input_shape", "steps", "seed", "device", "timeout", "rules", "ignore",
              "train_steps", "optimizer", "lr", "precision", "verify_fixes")


def _ignores(p: str, key: str, value: Any) -> list[Any]:
    """`ignore:` entries: {rule: ID or CODE, layer: GLOB, model: GLOB, reason: TEXT}; a reason is required."""
    from gradcheck_cli.baseline import Ignore
    from gradcheck_cli.rules import RULES, get_rule

    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(p, key, "expected a list of {rule, layer, model, reason} entries")
    out = []
    allowed = ["rule", "layer", "model", "reason"]
    for i, item in enumerate(value):
        k = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(p, k, f"expected a mapping with rule and/or layer, and reason (got {V.show(item)})")
        for name in item:
            if name not in allowed:
                raise ConfigError(p, f"{k}.{name}", "unknown key", hint=V.suggest(str(name), allowed))
        if "reason" not in item:
            raise ConfigError(p, f"{k}.reason", "missing: every ignore needs a reason",
                              hint="say why the finding is acceptable, e.g. reason: 'frozen encoder'")
        reason = V.string(p, f"{k}.reason", item["reason"])
        rule_id = None
        if "rule" in item:
            r = get_rule(str(item["rule"]))
            if r is None:
                raise ConfigError(p, f"{k}.rule", f"unknown rule {V.show(item['rule'])}",
                                  hint=V.suggest(str(item["rule"]), [x.id for x in RULES]))
            rule_id = r.id
        layer = V.string(p, f"{k}.layer", item["layer"]) if "layer" in item else None
        model = V.string(p, f"{k}.model", item["model"]) if "model" in item else None
        if rule_id is None and layer is None:
            raise ConfigError(p, k, "an ignore needs a rule, a layer, or both")
        out.append(Ignore(reason=reason, rule=rule_id, layer=layer, model=model))
    return out


def _models(p: str, value: Any, rules: Any, get_rule: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise ConfigError(p, "models", "expected a non-empty list of {model: SPEC, batch, loss, ...} entries")
    out = []
    for i, item in enumerate(value):
        k = f"models[{i}]"
        if isinstance(item, str):
            item = {"model": item}
        if not isinstance(item, dict):
            raise ConfigError(p, k, f"expected a model spec or a mapping with `model` (got {V.show(item)})")
        if "model" not in item:
            raise ConfigError(p, f"{k}.model", "missing: each entry needs model: path/to/file.py:NAME")
        entry: dict[str, Any] = {}
        for name, v in item.items():
            if name not in MODEL_KEYS:
                hint = ("set it once at the top level: it applies to the whole run" if name in TOP_KEYS
                        else V.suggest(str(name), list(MODEL_KEYS)))
                raise ConfigError(p, f"{k}.{name}", "not allowed in a model entry", hint=hint)
            if name == "model":
                entry["model"] = V.string(p, f"{k}.model", v)
            elif name == "rules":
                entry["rules"] = _rules(p, v, rules, get_rule, prefix=f"{k}.rules")
            elif name == "ignore":
                entry["ignore"] = _ignores(p, f"{k}.ignore", v)
            else:
                entry[name] = TOP_KEYS[name](p, f"{k}.{name}", v)
        out.append(entry)
    return out


def load_config(path: Path) -> dict[str, Any]:
    """Read and validate a config file; returns {key: value} with rules as {rule_id: RuleSettings}."""
    from gradcheck_cli.paths import MAX_CONFIG_BYTES, input_file, read_text, shown
    from gradcheck_cli.rules import RULES, get_rule

    p = shown(path)
    input_file(path, "config", max_bytes=MAX_CONFIG_BYTES)
    doc = parse_yaml(read_text(path, "config", MAX_CONFIG_BYTES), p)
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise InputError(f"{p}: the top level must be a mapping of settings (got {type(doc).__name__})")
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key not in TOP_KEYS:
            raise ConfigError(p, str(key), "unknown key", hint=V.suggest(str(key), list(TOP_KEYS)))
        if key == "rules":
            out["rules"] = _rules(p, value, RULES, get_rule)
        elif key == "ignore":
            out["ignore"] = _ignores(p, "ignore", value)
        elif key == "models":
            out["models"] = _models(p, value, RULES, get_rule)
        elif key == "output":
            out["outputs"] = V.outputs(p, key, value)
        else:
            out[key] = TOP_KEYS[key](p, key, value)
    return out


def _rules(p: str, value: Any, rules: Any, get_rule: Any, prefix: str = "rules") -> dict[str, RuleSettings]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(p, prefix, "expected a mapping of rule id to settings")
    out: dict[str, RuleSettings] = {}
    ids = [r.id for r in rules]
    for rid, body in value.items():
        r = get_rule(str(rid))
        if r is None:
            raise ConfigError(p, f"{prefix}.{rid}", "unknown rule", hint=V.suggest(str(rid), ids))
        rs = RuleSettings()
        if body is None:
            body = {}
        if isinstance(body, bool):
            body = {"enabled": body}
        if not isinstance(body, dict):
            raise ConfigError(p, f"{prefix}.{rid}", "expected a mapping (enabled, severity, options)")
        allowed = ["enabled", "severity"] + [o.name for o in r.options]
        for k, v in body.items():
            key = f"{prefix}.{rid}.{k}"
            if k == "enabled":
                if not isinstance(v, bool):
                    raise ConfigError(p, key, f"expected true or false (got {V.show(v)})")
                rs.enabled = v
                rs.given.add("enabled")
            elif k == "severity":
                rs.severity = Severity(V.choice(p, key, v, tuple(s.value for s in Severity)))
                rs.given.add("severity")
            else:
                opt = next((o for o in r.options if o.name == k), None)
                if opt is None:
                    raise ConfigError(p, key, "unknown option", hint=V.suggest(str(k), allowed))
                try:
                    rs.options[k] = opt.coerce(v)
                except ValueError as exc:
                    raise ConfigError(p, key, f"{exc} (got {V.show(v)})") from None
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
            s.cli_given.add(key)
    s.config_path = str(path) if path is not None else None
    if "lr" in s.cli_given and not (s.lr > 0 and s.lr != float("inf")):
        raise InputError(f"--lr must be a positive number (got {s.lr:g})", hint="e.g. --lr 1e-3")
    if "optimizer" in s.cli_given:
        if not (s.optimizer in V.OPTIMIZERS or ":" in s.optimizer):
            raise InputError(f"unknown --optimizer {s.optimizer!r}: expected one of {', '.join(V.OPTIMIZERS)}, "
                             "FILE.py:NAME or pkg.mod:NAME")
    if s.models and not cli["model"]:
        given = [f"--{k.replace('_', '-')}" for k in PER_MODEL_FLAGS if cli.get(k) is not None]
        if given:
            raise InputError(f"{', '.join(given)} cannot apply to every model listed in {s.config_path}",
                             hint="set it in each entry of models:, or pass MODEL to check one model")
    return s


# Flags that describe one model; with several models in the config they belong in each entry.
PER_MODEL_FLAGS = ("batch", "loss", "input_shape")


def expand_models(s: Settings, model_given: bool) -> list[Settings]:
    """One Settings per model to check. MODEL on the command line checks that model alone (with its
    `models:` entry's settings when it is listed there); otherwise every entry of `models:`."""
    import copy

    from gradcheck_cli.baseline import normalize_spec

    if not s.models:
        if not s.model:
            raise InputError("no model given", hint="pass MODEL (path/to/file.py:NAME) or list models: in "
                             f"the config ({s.config_path or DEFAULT_CONFIG_NAME})")
        return [s]
    entries = s.models
    if model_given:
        entries = [e for e in s.models if normalize_spec(e["model"]) == normalize_spec(s.model)] or [{"model": s.model}]
    out = []
    for entry in entries:
        m = copy.copy(s)
        m.models = []
        for key, value in entry.items():
            if key == "rules":
                m.rules = {**s.rules, **{rid: rs.merged_over(s.rules.get(rid, RuleSettings()))
                                         for rid, rs in value.items()}}
            elif key == "ignore":
                m.ignore = list(s.ignore) + list(value)
            elif key not in s.cli_given:
                setattr(m, key, value)
        out.append(m)
    return out
