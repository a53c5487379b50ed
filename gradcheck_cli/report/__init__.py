"""Renderers: one module per output format, chosen from a table. Each takes only the finished results
(a `Suite`: one Report per model, plus the models that could not be checked); a lone Report is wrapped."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, TextIO

import importlib
from collections.abc import Iterator, Mapping

from gradcheck_cli.choices import FORMATS, SUFFIXES
from gradcheck_cli.findings import FailOn, ModelError, Report, Suite, error_document

_MODULES = {"text": "text", "json": "json_report", "sarif": "sarif", "junit": "junit", "markdown": "markdown",
            "html": "html"}


class _Renderers(Mapping):
    """format -> render function; a renderer's module (rich for text, the HTML template) is imported when
    its format is first used, so that watch() in a training loop pays only for the formats it writes."""

    def __getitem__(self, fmt: str) -> Callable[..., None]:
        if fmt not in _MODULES:
            raise KeyError(fmt)
        return importlib.import_module(f"gradcheck_cli.report.{_MODULES[fmt]}").render

    def __contains__(self, fmt: object) -> bool:
        return fmt in _MODULES

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


RENDERERS: Mapping[str, Callable[..., None]] = _Renderers()

assert tuple(RENDERERS) == FORMATS, "gradcheck_cli.choices.FORMATS and the renderer table disagree"

__all__ = ["RENDERERS", "SUFFIXES", "preload", "render", "write_file", "write_error_file", "error_document", "parse_output"]


def preload(formats: Iterator[str] | list[str] | set[str]) -> None:
    """Import now what rendering these formats needs. Under torchrun rank 0 writes its error report from a
    SIGTERM handler (distributed._terminated), which may run in the middle of an import of these very
    modules: importing there met a partly initialised module (an ImportError, and no report)."""
    import gradcheck_cli.report.view  # noqa: F401

    for fmt in formats:
        RENDERERS[fmt]  # noqa: B018 - imports the renderer's module


def render(results: Report | Suite, fmt: str, out: TextIO, *, color: bool | None = None, width: int | None = None,
           max_rows: int = 40) -> None:
    """Render in `fmt`. The per-layer view is built here, once per report, and every renderer reads it."""
    from gradcheck_cli.report.view import build_view

    suite = Suite.of(results)
    views = [build_view(r) for r in suite.reports]
    RENDERERS[fmt](suite, out, color=color, width=width, max_rows=max_rows, views=views)


def parse_output(value: str, default_format: str | None) -> tuple[str, Path]:
    """'FORMAT:PATH' -> (format, path); a bare PATH takes --format, else its suffix, else text."""
    head, sep, tail = value.partition(":")
    if sep and head in RENDERERS and tail:
        return head, Path(tail)
    if sep and len(head) > 1 and head.isalnum():   # a mistyped format (a drive letter is one character)
        from gradcheck_cli.errors import InputError

        problem = f"no path after '{head}:'" if head in RENDERERS and not tail else f"unknown format {head!r}"
        raise InputError(f"--output {value}: {problem}",
                         hint=f"use FORMAT:PATH with FORMAT one of {', '.join(RENDERERS)}")
    if default_format is not None:
        return default_format, Path(value)
    return SUFFIXES.get(Path(value).suffix.lower(), "text"), Path(value)


def write_file(results: Report | Suite, fmt: str, path: Path, *, max_rows: int = 40) -> None:
    """Write the report to `path` atomically (appended instead when `path` is $GITHUB_STEP_SUMMARY,
    which other steps' output shares)."""
    def write(fh: TextIO) -> None:
        render(results, fmt, fh, color=False, max_rows=max_rows)   # files: not wrapped

    if _is_step_summary(path):
        with open(path, "a", encoding="utf-8") as fh:
            write(fh)
        return
    _atomic_write(path, write)


def write_error_file(error: dict[str, Any], model_spec: str | None, fmt: str, path: Path,
                     fail_on: FailOn = FailOn.WARNING) -> None:
    """Still leave a readable report behind for CI when the run failed (atomically, like reports)."""
    write_file(Suite(reports=[], errors=[ModelError(model_spec, error)], fail_on=fail_on), fmt, path)


def _is_step_summary(path: Path) -> bool:
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if not summary:
        return False
    try:
        return Path(summary).resolve() == path.resolve()
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0o022)   # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Callable[[TextIO], None]) -> None:
    """A temporary file in the same directory, then os.replace: readers never see half a report."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        # mkstemp makes the file 0600; a report gets the permissions a new file gets (the umask), or
        # keeps those of the file it replaces.
        try:
            mode = os.stat(path).st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
