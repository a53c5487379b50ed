"""Where the reports of a run go: the --output values parsed, and refused before the passes when one would
overwrite a file the run reads, two name the same file, or a path could not be written."""

from __future__ import annotations

import os
from pathlib import Path

from gradcheck_cli.errors import InputError

# `--output -` (or FORMAT:-) writes that report to stdout instead of a file.
STDOUT = "-"


def parse_outputs(values: list[str], default_format: str | None) -> list[tuple[str, Path]]:
    from gradcheck_cli.report import parse_output

    return [parse_output(v, default_format) for v in values]


def spec_file(spec: str | None, file_ok: bool = False) -> str | None:
    """The file a model/batch/loss spec reads ('net.py:build' -> 'net.py'; a batch may be a file itself)."""
    if not spec or not isinstance(spec, str):
        return None
    target, sep, _ = spec.rpartition(":")
    if sep and target and (target.endswith(".py") or "/" in target or "\\" in target):
        return target
    return spec if file_ok and not sep else None


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)   # hard links
    except (OSError, ValueError):
        return False


def guard_outputs(outputs: list[tuple[str, Path]], write_baseline: Path | None,
                  inputs: list[tuple[str, str | Path | None]]) -> None:
    """Refuse an output that would overwrite a file this run reads, and two outputs to one path."""
    from gradcheck_cli.paths import shown

    named = [(f"--output {shown(p)}", p) for _, p in outputs]
    if write_baseline is not None:
        named.append((f"--write-baseline {shown(write_baseline)}", write_baseline))
    for i, (flag, path) in enumerate(named):
        if str(path) == STDOUT:
            if any(str(q) == STDOUT for _, q in named[:i]):
                raise InputError(f"{flag}: stdout is already the destination of another --output",
                                 hint="give one of them a file path")
            if flag.startswith("--write-baseline"):
                raise InputError("--write-baseline -: the baseline must be a file", hint="give a file path")
            continue
        for what, src in inputs:
            if src is None or (what == "baseline" and flag.startswith("--write-baseline")):
                continue   # --baseline b.json --write-baseline b.json updates the baseline: allowed
            if _same_file(path, src):
                raise InputError(f"{flag} would overwrite the {what} {shown(src)}, which this run reads",
                                 hint="choose another output path")
        for other_flag, other in named[:i]:
            if str(other) != STDOUT and _same_file(path, other):
                raise InputError(f"{flag} and {other_flag} are the same file; one would overwrite the other",
                                 hint="give each output its own path")


def resolved(outputs: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """Absolute paths: a model whose code calls os.chdir does not move the reports."""
    return [(f, p if str(p) == STDOUT else Path(os.path.abspath(p))) for f, p in outputs]


def check_output_path(output: Path | str | None, flag: str = "--output") -> None:
    """Fail before the passes, not after them, when a file could not be written."""
    if not output or str(output) == STDOUT:
        return
    from gradcheck_cli.paths import shown

    path = Path(output)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        if not parent.is_dir():
            raise InputError(f"cannot write {shown(path)}: directory {shown(parent)} does not exist",
                             hint=f"create it first or choose another {flag}")
        if path.is_dir():
            raise InputError(f"cannot write {shown(path)}: it is a directory", hint=f"give a file path to {flag}")
        if path.exists() and not path.is_file():
            raise InputError(f"cannot write {shown(path)}: it is not a regular file (a FIFO or a device)",
                             hint=f"give a file path to {flag}")
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise InputError(f"cannot write {shown(path)}: permission denied", hint=f"choose another {flag}")
    except OSError as exc:   # a name too long for the file system, a symbolic-link loop
        raise InputError(f"cannot write {shown(path)}: {exc.strerror or exc}", hint=f"choose another {flag}") from None
