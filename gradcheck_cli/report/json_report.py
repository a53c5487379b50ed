"""JSON report (schema documented in docs/json-schema.md; `schema_version` bumps on breaking changes)."""

from __future__ import annotations

import json
from typing import TextIO

from gradcheck_cli.findings import Report


def render(report: Report, out: TextIO, **_: object) -> None:
    json.dump(report.to_dict(), out, indent=2, allow_nan=False)
    out.write("\n")
