"""The report as people read it: golden terminal output of real models (GPT-2, an RNN, a 100-layer MLP) at 80 and
120 columns and piped; the table's layout guarantees; colour switches; the one per-layer view; one list of choices.

Regenerate the goldens after an intended change (and review the diff):

    GRADCHECK_UPDATE_GOLDEN=1 python -m pytest tests/test_report_views.py
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from report_fixtures import html_of, report_of, text_of
from test_golden import check_golden

from gradcheck_cli.report import render
from gradcheck_cli.report.view import build_view

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = {"80": 80, "120": 120, "piped": None}


@pytest.mark.parametrize("name", ["gpt2", "rnn", "mlp100"])
@pytest.mark.parametrize("cols", list(WIDTHS))
def test_text_golden(name, cols):
    text = text_of(name, WIDTHS[cols])
    check_golden(f"text/{name}-{cols}.txt", text)


@pytest.mark.parametrize("name", ["gpt2", "rnn", "mlp100", "tanh"])
@pytest.mark.parametrize("width", [60, 80, 120])
def test_table_lines_fit_and_names_never_wrap(name, width):
    report = report_of(name)
    view = build_view(report)
    text = text_of(name, width, max_rows=0)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), [line for line in lines if len(line) > width]
    assert all(line == line.rstrip() for line in lines)
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("# layer"))
    end = next(i for i, line in enumerate(lines) if line.startswith("|∇W|:"))
    rows = [line for line in lines[start + 1:end] if re.match(r"^\s*\d+ ", line)]
    assert len(rows) == len(view.layers)
    by_index = {int(line.split()[0]): line for line in rows}
    for lv in view.layers:
        row = by_index[lv.index]            # every layer has exactly one row line ...
        shown = row.split()[1]
        assert shown == lv.local.split()[0] or "…" in shown, (lv.name, row)   # ... with its whole (or elided) name
        if lv.codes:
            assert f"◀ {','.join(lv.codes)}" in row, row                       # the marker stays on the row


@pytest.mark.parametrize("name", ["gpt2", "rnn", "mlp100", "tanh"])
def test_piped_output_is_not_wrapped(name):
    report = report_of(name)
    text = text_of(name, None, max_rows=0)
    lines = text.splitlines()
    assert all(line == line.rstrip() for line in lines)
    for f in report.active_findings():
        assert any(line.strip() == f.message for line in lines), f.message           # one line each
        for fix in f.fixes:
            assert any(line.endswith(fix) for line in lines), fix
    for lv in build_view(report).layers:
        assert any(lv.local in line.split() for line in lines), lv.name
    assert max(len(line) for line in lines) > 80          # nothing was wrapped at 80 columns


def test_every_covered_layer_is_flagged_in_every_view():
    report = report_of("tanh")
    [f] = [f for f in report.findings if f.rule == "saturated-activations"]
    assert len(f.layers) == len(f.evidence["saturated_fraction"]) > 1
    view = build_view(report)
    assert [lv.name for lv in view.layers if lv.codes] == f.layers
    text = text_of("tanh", 80, max_rows=0)
    for name in f.layers:
        assert re.search(rf"^\s*\d+ {re.escape(name)} .*◀ GC104", text, re.M), name
    doc = html_of("tanh")
    assert doc.count('class="flagged"') >= len(f.layers)


def test_view_is_plain_data_and_notes_are_shared():
    report = report_of("rnn")
    view = build_view(report)
    d = view.to_dict()
    assert isinstance(d["layers"][0]["notes"], list)
    [rnn] = view.recurrent
    note = next(n.text for n in rnn.notes if n.kind == "time")
    assert note.startswith("T=100 first/last")
    assert note in text_of("rnn", None) and note in html_of("rnn")


def test_blocks_of_a_transformer():
    view = build_view(report_of("gpt2"))
    assert [b.name for b in view.blocks] == [f"transformer.h.{i}" for i in range(4)]
    assert {"linear", "norm", "embedding"} <= set(view.kinds)
    assert not build_view(report_of("mlp100")).blocks           # nn.Sequential children are no blocks


class _Tty(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _colour(monkeypatch, env: dict[str, str], color=None, tty: bool = False) -> str:
    for k in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLUMNS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = _Tty() if tty else io.StringIO()
    render(report_of("rnn"), "text", out, color=color)
    return out.getvalue()


@pytest.mark.parametrize("env,color,tty,ansi", [
    ({}, None, False, False),                                   # piped: no colour
    ({"FORCE_COLOR": "1"}, None, False, True),                  # CI logs that render ANSI
    ({}, True, False, True),                                    # --color
    ({"FORCE_COLOR": "1"}, False, False, False),                # --no-color wins over FORCE_COLOR
    ({"TERM": "xterm-256color"}, None, True, True),             # a terminal gets colour ...
    ({"TERM": "xterm-256color", "NO_COLOR": "1"}, None, True, False),   # ... unless NO_COLOR is set
    ({"TERM": "xterm-256color", "NO_COLOR": "1"}, True, True, True),    # --color wins over NO_COLOR
])
def test_colour_switches(monkeypatch, env, color, tty, ansi):
    text = _colour(monkeypatch, env, color, tty)
    assert ("\x1b[3" in text or "\x1b[1;3" in text) == ansi, text[:200]


@pytest.mark.slow
def test_colour_flags_reach_the_renderer(monkeypatch):
    from typer.testing import CliRunner

    from gradcheck_cli.cli import app

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    spec = str(ROOT / "examples" / "healthy_mlp.py:build")
    runner = CliRunner()
    assert "\x1b[" in runner.invoke(app, ["check", spec]).stdout
    assert "\x1b[" not in runner.invoke(app, ["check", spec, "--no-color"]).stdout
    monkeypatch.delenv("FORCE_COLOR")
    assert "\x1b[" in runner.invoke(app, ["check", spec, "--color"]).stdout


def test_terminal_width_is_used_only_for_a_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "70")
    tty, piped = _Tty(), io.StringIO()
    render(report_of("mlp100"), "text", tty, color=False)
    render(report_of("mlp100"), "text", piped, color=False)
    assert max(map(len, tty.getvalue().splitlines())) <= 70
    assert max(map(len, piped.getvalue().splitlines())) > 70


def test_choices_live_in_one_place():
    """The lists of formats, devices and fail-on values are written once (gradcheck_cli/choices.py)."""
    from gradcheck_cli.choices import DEVICES, FAIL_ON, FORMATS
    from gradcheck_cli.cli import Device, OutputFormat
    from gradcheck_cli.findings import FailOn
    from gradcheck_cli.report import RENDERERS

    assert tuple(RENDERERS) == FORMATS == tuple(f.value for f in OutputFormat)
    assert DEVICES == tuple(d.value for d in Device) and FAIL_ON == tuple(f.value for f in FailOn)
    lists = [", ".join(f'"{x}"' for x in seq[:3]) for seq in (FORMATS, DEVICES, FAIL_ON)]
    lists += [", ".join(seq[:3]) for seq in (FORMATS, DEVICES, FAIL_ON)]
    for path in (ROOT / "gradcheck_cli").rglob("*.py"):
        if path.name == "choices.py":
            continue
        src = path.read_text(encoding="utf-8")
        for needle in lists:
            assert needle not in src, f"{path.relative_to(ROOT)} keeps its own copy of {needle!r}"


@pytest.mark.parametrize("command", [["--help"], ["check", "--help"], ["explain", "--help"], ["rules", "--help"]])
@pytest.mark.parametrize("columns", ["80", "60"])
def test_help_is_clean_at_the_terminal_width(command, columns):
    from typer.testing import CliRunner

    from gradcheck_cli.choices import DEVICES, FAIL_ON, FORMATS
    from gradcheck_cli.cli import app

    r = CliRunner().invoke(app, command, env={"COLUMNS": columns})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert all(line == line.rstrip() for line in lines)
    assert all(len(line) <= 80 for line in lines)                     # Click's plain help, at most 80 wide
    assert not re.search(r"<(bool|str|int|float|path)\b", r.output)   # no type placeholders
    assert "╭" not in r.output and "│" not in r.output
    if command[0] == "check":
        for choices in (FORMATS, DEVICES, FAIL_ON):                   # each choice list whole on one line
            assert any("|".join(choices) in line for line in lines), choices


@pytest.mark.parametrize("args,expected", [
    (["--steps", "abc"], "error: --steps: expected a whole number, got 'abc'"),
    (["--steps", "0"], "error: --steps: must be at least 1, got '0'"),
    (["--timeout=x"], "error: --timeout: expected a number, got 'x'"),
    (["-f", "yaml"], "error: --format: 'yaml' is not one of text, json, sarif, junit, markdown, html"),
    (["--device", "tpu"], "error: --device: 'tpu' is not one of auto, cpu, cuda"),
])
def test_option_errors_in_plain_words(args, expected):
    from typer.testing import CliRunner

    from gradcheck_cli.cli import app

    r = CliRunner().invoke(app, ["check", "m.py:build", *args])
    assert r.exit_code == 2
    [line] = r.stderr.splitlines()
    assert line.startswith(expected), line
    assert "Input should" not in line and "Value error" not in line


@pytest.mark.parametrize("name", ["gpt2", "rnn", "tanh"])
def test_no_markdown_backticks_in_json(name):
    import json

    out = io.StringIO()
    render(report_of(name), "json", out)
    doc = json.loads(out.getvalue())
    assert doc["findings"] or name == "gpt2"
    assert "`" not in json.dumps(doc, ensure_ascii=False)


def test_html_block_table_aggregates_each_block():
    from test_html_report import parse

    view = build_view(report_of("gpt2"))
    c = parse(html_of("gpt2"))
    [table] = c.root.find_all("table", "block-table")
    rows = table.find_all("tbody")[0].find_all("tr")
    assert [r.find_all("td")[0].text() for r in rows] == [b.name for b in view.blocks]
    first = view.layers[view.blocks[0].first:view.blocks[0].last + 1]
    expected = sum(lv.grad_norm ** 2 for lv in first if lv.has_weights) ** 0.5
    assert rows[0].find_all("td")[1].text() == str(len(first))
    assert float(rows[0].find_all("td")[2].text()) == pytest.approx(expected, rel=5e-3)
    assert not parse(html_of("mlp100")).root.find_all("table", "block-table")


def test_html_series_per_layer_kind_and_time_chart():
    from test_html_report import parse

    c = parse(html_of("gpt2"))
    [svg] = c.root.find_all("svg")
    kinds = {p.attrs["class"] for p in svg.find_all("polyline") if p.attrs.get("class", "").startswith("kind-")}
    assert kinds == {"kind-linear", "kind-norm", "kind-embedding"}
    legend = svg.find_all("g", "legend")[0].text()
    assert "|∇W| Norm" in legend and "|∇W| Linear/Conv" in legend
    rnn = parse(html_of("rnn"))
    [chart] = rnn.root.find_all("svg", "time-chart")
    points = len(chart.find_all("circle"))
    assert points == len(report_of("rnn").layers[0]["time_grad_profile"])
    assert "Gradient through time" in rnn.root.find_all("body")[0].text()
    # a single-kind model keeps one |∇W| line
    [svg] = parse(html_of("mlp100")).root.find_all("svg")
    assert not [p for p in svg.find_all("polyline") if p.attrs.get("class", "").startswith("kind-")]
