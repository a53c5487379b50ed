"""Renderers: one module per output format, chosen from a table. Each takes only the finished Report."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, TextIO

from gradcheck_cli.findings import Report
from gradcheck_cli.report import json_report, text


RENDERERS: dict[str, Callable[..., None]] = {
    "text": text.render,
    "json": json_report.render,
}


def render(report: Report, fmt: str, out: TextIO, *, color: bool | None = None, width: int | None = None,
           max_rows: int = 40) -> None:
    RENDERERS[fmt](report, out, color=color, width=width, max_rows=max_rows)


def write_file(report: Report, fmt: str, path: Path, *, max_rows: int = 40) -> None:
    """Write atomically: a temporary file in the same directory, then os.replace."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            render(report, fmt, fh, color=False, width=100, max_rows=max_rows)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
