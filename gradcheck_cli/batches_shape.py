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
    return check_size(dims, repr(text))


# A synthetic batch of more values than this (4 GiB of float32) is refused before anything is allocated.
MAX_ELEMENTS = 2**30


def check_size(dims: tuple[int, ...], shown: str) -> tuple[int, ...]:
    n = 1
    for d in dims:
        n *= d
    if n > MAX_ELEMENTS:
        raise InputError(f"bad --input-shape {shown}: {n:,} values in one batch; the valid range is 1 to "
                         f"{MAX_ELEMENTS:,} ({MAX_ELEMENTS // 2**28} GiB of float32)",
                         hint="a few examples are enough to check gradients: use a smaller batch dimension")
    return dims
