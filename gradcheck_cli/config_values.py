"""Checks of one configured value each (the config file and its `models:` entries): type, range, allowed
choices. Errors name the file, the key and the allowed values, the value shown bounded and on one line, e.g.
    gradcheck.yaml: key 'steps': must be at least 1 (got 0)
"""

from __future__ import annotations

import difflib
from typing import Any

from gradcheck_cli.errors import InputError

# Valid ranges, shared with the command-line options.
MAX_STEPS = 10_000
MAX_SEED = 2**32 - 1        # seeds are combined with step numbers into torch.manual_seed's 64 bits
MAX_TIMEOUT_S = 1_000_000.0
VERIFY_MODES = ("off", "failing", "all")
OPTIMIZERS = ("sgd", "adam", "adamw")


class ConfigError(InputError):
    def __init__(self, path: str, key: str, problem: str, hint: str | None = None):
        from gradcheck_cli.report.escape import terminal

        key = terminal(key)
        key = key if len(key) <= 80 else key[:79] + "…"
        super().__init__(f"{path}: key '{key}': {problem}", hint=hint)


def show(value: Any, limit: int = 60) -> str:
    """repr() of a configured value for an error message, bounded (a value can be huge) and one line."""
    import reprlib

    from gradcheck_cli.report.escape import terminal

    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxdict = r.maxtuple = r.maxset = 4
    r.maxlevel = 3
    try:
        text = terminal(r.repr(value))
    except Exception:   # pragma: no cover - repr of a plain YAML value does not fail
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def suggest(key: str, allowed: list[str]) -> str | None:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f"did you mean '{close[0]}'? allowed: {', '.join(allowed)}" if close else f"allowed: {', '.join(allowed)}"


def integer(path: str, key: str, v: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError(path, key, f"expected an integer (got {show(v)})")
    if minimum is not None and v < minimum:
        raise ConfigError(path, key, f"must be at least {minimum} (got {show(v)})")
    if maximum is not None and v > maximum:
        raise ConfigError(path, key, f"must be between {minimum if minimum is not None else '-'} and {maximum:,} "
                                     f"(got {show(v)})")
    return v


def seconds(path: str, key: str, v: Any) -> float:
    import math

    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(path, key, f"expected a number of seconds (got {show(v)})")
    if not math.isfinite(v) or v <= 0 or v > MAX_TIMEOUT_S:
        raise ConfigError(path, key, f"must be a number of seconds greater than 0 and at most {MAX_TIMEOUT_S:g} "
                                     f"(got {show(v)})")
    return float(v)


def choice(path: str, key: str, v: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in allowed:
        raise ConfigError(path, key, f"expected one of {', '.join(allowed)} (got {show(v)})")
    return v


def verify_mode(path: str, key: str, v: Any) -> str:
    """verify_fixes: true (the failing findings), false, or one of off | failing | all."""
    if isinstance(v, bool):
        return "failing" if v else "off"
    if isinstance(v, str) and v in VERIFY_MODES:
        return v
    raise ConfigError(path, key, f"expected true, false or one of {', '.join(VERIFY_MODES)} (got {show(v)})")


def string(path: str, key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(path, key, f"expected a non-empty string (got {show(v)})")
    return v


def shape(path: str, key: str, v: Any) -> tuple[int, ...]:
    from gradcheck_cli.batches_shape import check_size, parse_shape

    if isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v) and v:
        try:
            return check_size(tuple(v), show(v))
        except InputError as exc:
            raise ConfigError(path, key, exc.message.split(": ", 1)[-1]) from None
    if isinstance(v, str):
        try:
            return parse_shape(v)
        except InputError as exc:
            if "values" in exc.message:   # parsed, but too large
                raise ConfigError(path, key, exc.message.split(": ", 1)[-1]) from None
    raise ConfigError(path, key, f"expected a list of positive integers or '8,3,32,32' (got {show(v)})")




def optimizer(path: str, key: str, v: Any) -> str:
    if isinstance(v, str) and (v in OPTIMIZERS or (":" in v and v.split(":")[-1])):
        return v
    raise ConfigError(path, key, f"expected one of {', '.join(OPTIMIZERS)}, FILE.py:NAME or pkg.mod:NAME (got {v!r})")


def learning_rate(path: str, key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v != v or v == float("inf"):
        raise ConfigError(path, key, f"expected a positive number (got {v!r})")
    return float(v)


def outputs(path: str, key: str, v: Any) -> list[str]:
    items = v if isinstance(v, list) else [v]
    if not items:
        raise ConfigError(path, key, "expected a path, FORMAT:PATH, or a list of them (got an empty list)")
    return [string(path, f"{key}[{i}]" if isinstance(v, list) else key, x) for i, x in enumerate(items)]
