"""Parsing --input-shape; kept free of torch so the CLI can validate flags before loading it."""

from __future__ import annotations

from gradcheck_cli.errors import InputError


def parse_shape(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"bad --input-shape {text!r}: expected comma-separated positive integers, "
                         "batch dimension first, e.g. 8,3,32,32") from None
    if not dims or any(d <= 0 for d in dims):
        raise InputError(f"bad --input-shape {text!r}: every dimension must be a positive integer, "
                         "batch dimension first, e.g. 8,3,32,32")
    return dims
