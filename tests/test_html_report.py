"""The self-contained HTML report: structure, chart, findings, escaping, scale, and golden files.

No torch: reports are built from hand-made statistics (the helpers of test_golden.py). After an intended
change to the HTML renderer, regenerate the goldens and review the diff:

    GRADCHECK_UPDATE_GOLDEN=1 python -m pytest tests/test_html_report.py
"""
from __future__ import annotations

import io
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_golden import broken_stats, build, check_golden, healthy_stats

from gradcheck_cli import stats as S
from gradcheck_cli.findings import Finding, ModelError, Report, Severity, Suite
from gradcheck_cli.report import render, write_error_file

VOID = {"meta", "br", "hr", "img", "link", "input", "col", "wbr", "area", "base", "source"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        for c in self.children:
            if isinstance(c, Node):
                yield c
                yield from c.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        return [n for n in self.iter() if (tag is None or n.tag == tag) and (cls is None or cls in n.classes)]

    def ancestors(self):
        n = self.parent
        while n is not None:
            yield n
            n = n.parent


class Collector(HTMLParser):
    """A small DOM: every element with its attributes, children and (unescaped) text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.cur = self.root
        self.doctype: str | None = None
        self.unclosed: list[str] = []

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag):
        assert self.cur.tag == tag, f"</{tag}> closes <{self.cur.tag}>"
        self.cur = self.cur.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse(doc: str) -> Collector:
    c = Collector()
    c.feed(doc)
    c.close()
    assert c.cur is c.root, f"unclosed <{c.cur.tag}>"
    return c


def to_html(obj: Report | Suite) -> str:
    out = io.StringIO()
    render(obj, "html", out)      # through the RENDERERS table
    return out.getvalue()


def plain(s: str) -> str:
    """Messages' `code` spans become <code>: compare text without backticks, whitespace collapsed."""
    return " ".join(s.replace("`", "").split())


def positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def in_class(node: Node, cls: str) -> bool:
    return any(cls in a.classes for a in node.ancestors())


def linear(i: int, name: str | None = None, g: float | None = 0.1, og: float | None = 0.05) -> S.LayerStats:
    return S.LayerStats(index=i, name=name or f"fc{i}", type="Linear", role=S.PARAM, params=100,
                        trainable_params=100, calls=1, weight_norm=1.0, weight_rms=0.1, fan_in=10, fan_out=10,
                        grad_norm=g, output_grad_norm=og)


def run_stats(layers: list[S.LayerStats]) -> S.RunStats:
    n = sum(lv.params for lv in layers)
    return S.RunStats(layers=layers, steps=3, losses=[1.0, 0.9, 1.1], parameters=n, trainable_parameters=n,
                      total_grad_norm=0.4, total_grad_norm_max=0.45)


# -- golden files -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case,stats_fn", [("broken", broken_stats), ("healthy", healthy_stats)])
def test_html_golden(case, stats_fn):
    doc = to_html(build(stats_fn(), f"model_{case}.py:build"))
    assert doc == to_html(build(stats_fn(), f"model_{case}.py:build"))    # deterministic
    parse(doc)
    check_golden(f"{case}.html", doc)


# -- document -----------------------------------------------------------------------------------------------

def test_self_contained_valid_document():
    doc = to_html(build(broken_stats(), "model_broken.py:build"))
    assert doc.startswith("<!DOCTYPE html>\n")
    c = parse(doc)
    assert c.doctype.lower() == "doctype html"
    [html_el] = c.root.find_all("html")
    assert html_el.attrs.get("lang") == "en"
    assert [m.attrs.get("charset") for m in c.root.find_all("meta") if "charset" in m.attrs] == ["utf-8"]
    [title] = [t for t in c.root.find_all("title") if t.parent.tag == "head"]
    assert "model_broken.py:build" in title.text() and "FAIL" in title.text()
    assert len(c.root.find_all("style")) == 1
    assert not c.root.find_all("script")
    for tag in ("img", "link", "iframe", "object", "embed", "image", "use", "foreignobject"):
        assert not c.root.find_all(tag), tag
    for node in c.root.iter():
        assert "src" not in node.attrs
        for attr in ("href", "xlink:href"):
            assert node.attrs.get(attr, "#").startswith("#"), node.attrs
        assert not any(k.startswith("on") for k in node.attrs), node.attrs   # no inline event handlers
    assert "http://" not in doc and "https://" not in doc
    assert "url(" not in doc and "@import" not in doc
    ids = [n.attrs["id"] for n in c.root.iter() if "id" in n.attrs]
    assert len(ids) == len(set(ids))


def test_header_verdict_counts_and_settings():
    report = build(broken_stats(), "model_broken.py:build")
    c = parse(to_html(report))
    [section] = c.root.find_all("section", "report")
    head = section.find_all("header")[0]
    assert [b.text() for b in head.find_all("span", "badge")] == ["FAIL"]
    assert "badge-fail" in head.find_all("span", "badge")[0].classes
    text = plain(head.text())
    for part in ("model_broken.py:build", "Net", "21,450 parameters", "0 errors", "3 warnings", "0 info",
                 "exit 1", "fail-on warning"):
        assert part in text, part
    [settings] = section.find_all("table", "settings")
    rows = {r.find_all("th")[0].text(): r.find_all("td")[0].text() for r in settings.find_all("tr")}
    assert rows["steps"] == "3" and rows["seed"] == "0" and rows["device"] == "cpu"
    assert rows["loss"] == "cross-entropy (synthetic targets)" and rows["input shape"] == "[8, 64]"
    assert rows["fail-on"] == "warning" and rows["config"] == "none" and rows["rule settings"] == "defaults"
    assert rows["timings"] == "load 0.50 s, passes 0.25 s, analysis 0.01 s, total 0.76 s"
    healthy = parse(to_html(build(healthy_stats(), "h.py:build")))
    assert [b.text() for b in healthy.root.find_all("section", "report")[0].find_all("span", "badge")] == ["PASS"]


def test_rule_settings_and_notes_rendered():
    report = build(healthy_stats(), "h.py:build")
    report.settings["rules"] = {"vanishing-gradients": {"enabled": True, "severity": None, "threshold": 1e-4}}
    report.notes = ["batch inferred from <forward> & signature"]
    c = parse(to_html(report))
    rows = {r.find_all("th")[0].text(): r.find_all("td")[0].text() for r in c.root.find_all("table", "settings")[0]
            .find_all("tr")}
    assert rows["rule settings"] == "vanishing-gradients: {enabled: true, severity: -, threshold: 1.00e-04}"
    assert [li.text() for li in c.root.find_all("ul", "notes")[0].find_all("li")] == [report.notes[0]]


# -- chart --------------------------------------------------------------------------------------------------

def chart_checks(report: Report, svg: Node) -> None:
    assert svg.attrs.get("role") == "img" and svg.attrs.get("aria-label")
    for cls, key in (("series-weight", "grad_norm"), ("series-output", "output_grad_norm")):
        [group] = svg.find_all("g", cls)
        circles = group.find_all("circle")
        expected = [lv for lv in report.layers if positive(lv.get(key))]
        assert len(circles) == len(expected), cls
        for circle, lv in zip(circles, expected):
            tip = circle.find_all("title")[0].text()
            assert tip.startswith(f"{lv['name'] or '(model)'}: ")
        if len(expected) > 1:
            assert group.find_all("polyline")
        for line in group.find_all("polyline"):
            pts = line.attrs["points"].split()
            assert len(pts) >= 2 and all(len(p.split(",")) == 2 for p in pts)


def test_chart_series_axis_and_legend():
    report = build(broken_stats(), "model_broken.py:build")
    c = parse(to_html(report))
    [svg] = c.root.find_all("svg")
    chart_checks(report, svg)
    ylabels = [t.text() for t in svg.find_all("text", "ylabel")]
    assert ylabels and all(re.fullmatch(r"1e-?\d+", t) for t in ylabels)
    decades = [int(t[2:]) for t in ylabels]
    assert decades == sorted(decades, reverse=True) and len(set(decades)) == len(decades)
    assert decades[0] >= -2 and decades[-1] <= -8           # covers 1e-8 .. 0.0324
    assert len(svg.find_all("line", "grid")) == len(ylabels)
    legend = plain(svg.find_all("g", "legend")[0].text())
    assert "|∇W|" in legend and "|∂L/∂y|" in legend
    # layers with an active finding are highlighted: net.0 (GC101), net.9 (GC104), aux (GC106)
    bands = [r.find_all("title")[0].text() for r in svg.find_all("rect", "flagged") if r.find_all("title")]
    assert bands == ["net.0: GC101", "net.9: GC104", "aux: GC106"]
    flagged_labels = [t.find_all("title")[0].text() for t in svg.find_all("text", "xlabel") if "flagged" in t.classes]
    assert flagged_labels == ["net.0", "net.9", "aux"]
    assert len(svg.find_all("text", "xlabel")) == len(report.layers)
    # the unused head has weights but no gradient: it ends the weight line; weightless sigmoids do not
    [wline] = svg.find_all("g", "series-weight")[0].find_all("polyline")
    assert len(wline.attrs["points"].split()) == 5


def test_nonfinite_values_get_red_markers_and_break_the_line():
    layers = [linear(0), linear(1, g=float("nan"), og=float("inf")), linear(2), linear(3, og=0.0),
              linear(4, g=None), linear(5)]
    report = build(run_stats(layers), "nan.py:build")
    c = parse(to_html(report))
    [svg] = c.root.find_all("svg")
    chart_checks(report, svg)
    bad = svg.find_all(None, "nonfinite")
    bad = [n for n in bad if in_class(n, "nonfinite-markers")]
    assert sorted(n.find_all("title")[0].text() for n in bad) == ["fc1: |∂L/∂y| inf", "fc1: |∇W| NaN"]
    # fc1 breaks both lines; zero and a missing gradient break them too
    weight = [len(p.attrs["points"].split()) for p in svg.find_all("g", "series-weight")[0].find_all("polyline")]
    output = [len(p.attrs["points"].split()) for p in svg.find_all("g", "series-output")[0].find_all("polyline")]
    assert weight == [2]               # fc0 | fc2 fc3 | fc5  (fc0 and fc5 alone: markers only)
    assert output == [2]               # fc0 | fc2 | fc4 fc5
    rows = c.root.find_all("table", "layer-table")[0].find_all("tbody")[0].find_all("tr")
    assert [td.text() for td in rows[1].find_all("td")][3:5] == ["NaN", "inf"]


def test_zero_layers_render_a_sentence_instead_of_a_chart():
    report = build(run_stats([]), "empty.py:build")
    c = parse(to_html(report))
    assert not c.root.find_all("svg")
    assert "no gradient-flow chart" in c.root.find_all("p", "no-chart")[0].text()
    assert c.root.find_all("details", "layers")


def test_single_layer_chart():
    report = build(run_stats([linear(0, g=0.3, og=2e-3)]), "one.py:build")
    [svg] = parse(to_html(report)).root.find_all("svg")
    chart_checks(report, svg)
    assert not svg.find_all("polyline")
    assert [t.find_all("title")[0].text() for t in svg.find_all("text", "xlabel")] == ["fc0"]
    decades = [int(t.text()[2:]) for t in svg.find_all("text", "ylabel")]
    assert decades[0] - decades[-1] >= 4                      # at least four decades, even for one point


def test_no_positive_values_still_renders_an_axis():
    report = build(run_stats([linear(0, g=None, og=None), linear(1, g=0.0, og=0.0)]), "zero.py:build")
    [svg] = parse(to_html(report)).root.find_all("svg")
    chart_checks(report, svg)
    assert svg.find_all("text", "ylabel")


def test_thousand_layers_keep_every_point_and_thin_the_labels():
    layers = [linear(i, name=f"blocks.{i}.mlp.fc", g=10 ** (-(i % 9)), og=0.05 * 1.01 ** i) for i in range(1000)]
    report = build(run_stats(layers), "deep.py:build")
    doc = to_html(report)
    assert len(doc.encode("utf-8")) < 2_000_000
    c = parse(doc)
    [svg] = c.root.find_all("svg")
    chart_checks(report, svg)
    labels = svg.find_all("text", "xlabel")
    assert 10 <= len(labels) <= 40
    assert len(c.root.find_all("table", "layer-table")[0].find_all("tbody")[0].find_all("tr")) == 1000


# -- findings -----------------------------------------------------------------------------------------------

def test_every_active_finding_with_message_evidence_and_fixes():
    report = build(broken_stats(), "model_broken.py:build")
    c = parse(to_html(report))
    blocks = c.root.find_all("article", "finding")
    active = report.active_findings()
    assert len(blocks) == len(active) == 3
    for n, (f, block) in enumerate(zip(active, blocks), 1):
        assert block.attrs["id"] == f"finding-{f.code}-{n}"
        assert f"severity-{f.severity.value}" in block.classes
        head = plain(block.find_all("h4")[0].text())
        assert f.code in head and f.rule in head and f.severity.value.upper() in head and f.layer in head
        assert plain(block.find_all("p", "message")[0].text()) == plain(f.message)
        [fixes] = block.find_all("ol", "fixes")
        assert [plain(li.text()) for li in fixes.find_all("li")] == [plain(x) for x in f.fixes]
        keys = [tr.find_all("td")[0].text() for tr in block.find_all("table", "evidence")[0].find_all("tr")]
        assert keys == list(f.evidence)


def test_finding_location_and_long_evidence_are_compact():
    report = build(healthy_stats(), "h.py:build")
    report.findings.append(Finding(
        rule="exploding-gradients", code="GC102", severity=Severity.ERROR, layer="", message="Too big.",
        evidence={"profile": list(range(100)), "nested": {"a": {"x": 1.5, "y": [1, 2]}, "b": None}, "ok": True},
        fixes=["Clip."], location={"file": "src/net.py", "line": 42}))
    c = parse(to_html(report))
    [block] = c.root.find_all("article", "finding")
    assert block.attrs["id"] == "finding-GC102-1" and "severity-error" in block.classes
    head = plain(block.find_all("h4")[0].text())
    assert "at (model)" in head and "src/net.py:42" in head
    ev = {tr.find_all("td")[0].text(): tr.find_all("td")[1].text()
          for tr in block.find_all("table", "evidence")[0].find_all("tr")}
    assert ev["profile"] == "[0, 1, 2, 3, 4, 5, 6, 7, … +92 more]"
    assert ev["nested"] == "{a: {x: 1.5, y: [1, 2]}, b: -}"
    assert ev["ok"] == "true"


def test_suppressed_findings_are_listed_separately():
    report = build(broken_stats(), "model_broken.py:build")
    target = next(f for f in report.findings if f.code == "GC104")
    target.suppressed = {"by": "ignore", "reason": "known <issue> & accepted"}
    c = parse(to_html(report))
    codes = [b.attrs["id"].split("-")[1] for b in c.root.find_all("article", "finding")]
    assert codes == ["GC101", "GC106"]
    [section] = c.root.find_all("section", "suppressed")
    [item] = section.find_all("li", "suppressed-finding")
    text = plain(item.text())
    assert "GC104" in text and plain(target.message) in text
    assert "suppressed by ignore: known <issue> & accepted" in text
    assert "2 warnings" in plain(c.root.find_all("p", "counts")[0].text())


def test_user_strings_are_escaped():
    evil = "<script>alert(1)</script>"
    report = build(run_stats([linear(0, name=evil), linear(1, name='q"uote\'s & <b>')]), 'spec<"&>.py:build')
    report.findings.append(Finding(rule="r", code="GC999", severity=Severity.WARNING, layer=evil,
                                   message=f"bad {evil} & \"quoted\"", evidence={evil: evil},
                                   fixes=[f"fix {evil}"]))
    report.notes.append(evil)
    report.model["source"] = {"file": "<dir>/m.py", "line": 3}
    doc = to_html(report)
    assert evil not in doc and "<b>" not in doc
    c = parse(doc)
    assert not c.root.find_all("script") and not c.root.find_all("b")
    body = c.root.find_all("body")[0].text()
    assert body.count(evil) >= 6                       # chart tooltip, label, band, layer row, finding, note
    assert 'spec<"&>.py:build' in body and 'q"uote\'s & <b>' in body and "<dir>/m.py:3" in body
    [block] = c.root.find_all("article", "finding")
    assert block.find_all("p", "message")[0].text() == f"bad {evil} & \"quoted\""
    [svg] = c.root.find_all("svg")
    assert 'spec<"&>.py:build' in svg.attrs["aria-label"]


# -- several models, errors, baseline ------------------------------------------------------------------------

ERROR = {"type": "load", "phase": "import", "message": "No module named 'torchvisionx'",
         "where": "models/bad.py:3", "hint": "pip install torchvisionx", "exit_code": 3}


def test_suite_with_two_reports_and_an_error():
    r1, r2 = build(broken_stats(), "broken.py:build"), build(healthy_stats(), "healthy.py:build")
    suite = Suite(reports=[r1, r2], errors=[ModelError("bad.py:build", ERROR)], fail_on=r1.fail_on)
    doc = to_html(suite)
    c = parse(doc)
    [summary] = c.root.find_all("table", "summary")
    rows = summary.find_all("tbody")[0].find_all("tr")
    assert len(rows) == 3
    assert [plain(r.find_all("td")[0].text()) for r in rows] == ["broken.py:build", "healthy.py:build", "bad.py:build"]
    assert [r.find_all("span", "badge")[0].text() for r in rows] == ["FAIL", "PASS", "ERROR"]
    assert [r.find_all("a")[0].attrs["href"] for r in rows] == ["#report-1", "#report-2", "#error-1"]
    assert [s.attrs["id"] for s in c.root.find_all("section", "report")] == ["report-1", "report-2"]
    svgs = c.root.find_all("svg")
    assert len(svgs) == 2
    chart_checks(r1, svgs[0])
    chart_checks(r2, svgs[1])
    [box] = c.root.find_all("div", "error-box")
    fields = dict(zip([dt.text() for dt in box.find_all("dt")], [dd.text() for dd in box.find_all("dd")]))
    assert fields == {"type": "load", "phase": "import", "message": ERROR["message"], "where": "models/bad.py:3",
                      "hint": ERROR["hint"], "exit code": "3"}
    top = plain(c.root.find_all("header", "top")[0].text())
    assert "ERROR" in top and "3 models" in top and "exit 3" in top
    assert "3 models" in c.root.find_all("title")[0].text()


def test_error_only_file_renders(tmp_path: Path):
    path = tmp_path / "report.html"
    write_error_file(ERROR, "bad.py:build", "html", path)
    c = parse(path.read_text(encoding="utf-8"))
    assert len(c.root.find_all("div", "error-box")) == 1
    assert not c.root.find_all("table", "summary") and not c.root.find_all("svg")


def test_baseline_line():
    report = build(broken_stats(), "model_broken.py:build")
    suite = Suite(reports=[report], fail_on=report.fail_on,
                  baseline={"path": "gradcheck-baseline.json", "suppressed": 2, "resolved": [{"code": "GC101"}]})
    [line] = parse(to_html(suite)).root.find_all("p", "baseline")
    text = plain(line.text())
    assert "gradcheck-baseline.json" in text and "2 findings suppressed" in text
    assert "1 baseline entry no longer found" in text


def test_layer_table_in_details():
    report = build(broken_stats(), "model_broken.py:build")
    c = parse(to_html(report))
    [details] = c.root.find_all("details", "layers")
    assert "Layers (11)" in details.find_all("summary")[0].text()
    rows = details.find_all("tbody")[0].find_all("tr")
    cells = [[td.text() for td in r.find_all("td")] for r in rows]
    assert [row[1] for row in cells] == [lv["name"] for lv in report.layers]
    assert cells[0][:5] == ["0", "net.0", "Linear", "2.10e-08", "1.00e-08"]
    assert cells[9][5] == "sat 72%; GC104"   # the same note text as the terminal table
    assert [i for i, r in enumerate(rows) if "flagged" in r.classes] == [0, 9, 10]
    assert [th.text() for th in details.find_all("th")] == ["#", "layer", "type", "|∇W|", "|∂L/∂y|", "notes"]
