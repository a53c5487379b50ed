"""Every fixed list of choices the command line, the config file and the renderers accept, in one place.

The CLI builds its option types from these tuples, the config validates against them and the renderer table
is checked against FORMATS; tests/test_formats.py checks that no other module keeps its own copy.
"""

from __future__ import annotations

# Report formats, in the order --help lists them.
FORMATS: tuple[str, ...] = ("text", "json", "sarif", "junit", "markdown", "html")

# `--output PATH` without FORMAT: and without --format: the format follows the file's suffix (else text).
SUFFIXES: dict[str, str] = {".json": "json", ".sarif": "sarif", ".xml": "junit", ".md": "markdown",
                            ".markdown": "markdown", ".html": "html", ".htm": "html", ".txt": "text"}

# Where the passes run.
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")

# --fail-on values: the severities, lowest last, then never (findings.FailOn is built from this).
FAIL_ON: tuple[str, ...] = ("error", "warning", "info", "never")

assert set(SUFFIXES.values()) <= set(FORMATS)

# --precision for the training rehearsal (--train-steps).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
