"""Wrappers that add a prefix to every layer name without changing the model: torch.compile's
OptimizedModule (`_orig_mod.`) and DistributedDataParallel / DataParallel (`module.`).

gradcheck checks the module inside (so layer names, baselines, ignores and source locations are those of
the user's own model) and strips the prefixes from names a user wrote with them (ignore globs, baselines).
"""

from __future__ import annotations

from typing import Any

PREFIXES = ("_orig_mod.", "module.")
_WRAPPERS = {"OptimizedModule": "_orig_mod", "DistributedDataParallel": "module", "DataParallel": "module"}


def unwrap(model: Any) -> tuple[Any, list[str]]:
    """(the innermost wrapped module, the wrapper class names removed, outermost first)."""
    removed: list[str] = []
    while True:
        attr = _WRAPPERS.get(type(model).__name__)
        inner = getattr(model, attr, None) if attr else None
        if inner is None or inner is model or not hasattr(inner, "named_modules"):
            return model, removed
        removed.append(type(model).__name__)
        model = inner


def strip_prefix(name: str | None) -> str | None:
    """`_orig_mod.encoder.fc` -> `encoder.fc`; `module._orig_mod.fc` -> `fc`; other names unchanged."""
    if name is None:
        return None
    if name in ("_orig_mod", "module"):   # the wrapped model itself
        return ""
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if name.startswith(p) and len(name) > len(p):
                name = name[len(p):]
                changed = True
    return name
