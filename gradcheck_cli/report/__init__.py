"""Renderers: one module per output format, chosen from a table. Each takes only the finished Report."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, TextIO

from gradcheck_cli import __version__
from gradcheck_cli.findings import SCHEMA_VERSION, Report
from gradcheck_cli.report import json_report, text


RENDERERS: dict[str, Callable[..., None]] = {
    "text": text.render,
    "json": json_report.render,
}


def render(report: Report, fmt: str, out: TextIO, *, color: bool | None = None, width: int | None = None,
           max_rows: int = 40) -> None:
    RENDERERS[fmt](report, out, color=color, width=width, max_rows=max_rows)


def write_file(report: Report, fmt: str, path: Path, *, max_rows: int = 40) -> None:
    """Write the report to `path` atomically."""
    _atomic_write(path, lambda fh: render(report, fmt, fh, color=False, width=100, max_rows=max_rows))


def error_document(error: dict[str, Any], model_spec: str | None) -> dict[str, Any]:
    """The JSON written to --output when a run ends with exit 2, 3 or 4: why, and nothing measured."""
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "gradcheck", "version": __version__},
        "model": {"spec": model_spec},
        "error": error,
        "layers": [],
        "findings": [],
        "summary": {"counts": {"error": 0, "warning": 0, "info": 0}, "verdict": "error",
                    "exit_code": error["exit_code"]},
    }


def write_error_file(error: dict[str, Any], model_spec: str | None, fmt: str, path: Path) -> None:
    """Still leave a readable report behind for CI when the run failed (atomically, like reports)."""
    def write(fh: TextIO) -> None:
        if fmt == "json":
            json.dump(error_document(error, model_spec), fh, indent=2)
            fh.write("\n")
        else:
            where = f" in {error['where']}" if error.get("where") else ""
            hint = f" ({error['hint']})" if error.get("hint") else ""
            fh.write(f"gradcheck {__version__}  {model_spec}\nerror ({error['phase']}{where}): "
                     f"{error['message']}{hint}\nexit {error['exit_code']}\n")
    _atomic_write(path, write)


def _atomic_write(path: Path, write: Callable[[TextIO], None]) -> None:
    """A temporary file in the same directory, then os.replace: readers never see half a report."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
