"""JSON report (schema documented in docs/json-schema.md; `schema_version` bumps on breaking changes).

One model: that model's report. Several models: a combined document with a report per model."""

from __future__ import annotations

import json
from typing import TextIO

from gradcheck_cli.findings import Suite
from gradcheck_cli.report import escape


def render(suite: Suite, out: TextIO, **_: object) -> None:
    json.dump(escape.json_clean(suite.to_dict()), out, indent=2, allow_nan=False)
    out.write("\n")
