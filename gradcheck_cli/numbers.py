"""Number formatting shared by rule messages and renderers (no torch)."""

from __future__ import annotations

import math
from typing import Any


def fmt(x: Any, sci_digits: int = 2) -> str:
    """Compact: 3 significant digits in [1e-3, 1e4), scientific outside; NaN/inf spelled out."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"   # thousands separators on every integer of 1,000 or more
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.3g}"
    return f"{x:.{sci_digits}e}"


def plural(n: int, word: str, words: str | None = None) -> str:
    """'1 layer', '2 layers', '1,000 layers' (`words`: an irregular plural)."""
    return f"{fmt(n)} {word if n == 1 else (words or word + 's')}"


def count_phrase(counts: dict[str, int], suppressed: int = 0) -> str:
    """'0 errors, 1 warning, 2 info' (+ ', 3 suppressed'): the summary line every renderer shows."""
    out = f"{plural(counts['error'], 'error')}, {plural(counts['warning'], 'warning')}, {counts['info']} info"
    return out + (f", {suppressed} suppressed" if suppressed else "")
