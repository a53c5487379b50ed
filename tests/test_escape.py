"""gradcheck_cli/report/escape.py: user text made safe for every output format (no torch needed)."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from gradcheck_cli.report import escape

HOSTILE = [
    "a\n::error title=x::pwned",
    "red \x1b[31mRED\x1b[0m",
    "osc \x1b]0;title\x07 and \x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\",
    "bell\x07 backspace\x08 nul\x00 del\x7f c1\x9b31m",
    "cdata ]]> <tag> & \"quotes\" 'single'",
    "surrogate \udcff\udcfe from a non-UTF-8 file name",
    "| pipe ` backtick [link](javascript:alert(1)) ![img](http://x/y.png) <b>html</b>",
    "carriage\rreturn\r\nwindows",
    "\ufffe\uffff non-characters",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_terminal_has_no_escape_or_control_characters(text):
    out = escape.terminal(text)
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f for c in out), repr(out)
    assert "\x1b" not in out and "\n" not in out
    out.encode("utf-8")                                  # no lone surrogates left


def test_terminal_keeps_ordinary_text_and_shows_what_it_replaced():
    assert escape.terminal("layers.3 (Linear) — ∇W ✓") == "layers.3 (Linear) — ∇W ✓"
    assert escape.terminal("a\nb") == "a\\x0ab"
    assert escape.terminal("red \x1b[31mRED\x1b[0m") == "red RED"
    assert escape.terminal("\udcff") == "\\xff"          # the undecodable byte itself


@pytest.mark.parametrize("text", HOSTILE)
def test_xml_text_survives_a_round_trip_through_elementtree(text):
    root = ET.Element("testsuite", name=escape.xml_text(text))
    ET.SubElement(root, "failure", message=escape.xml_text(text)).text = escape.xml_text(text)
    parsed = ET.fromstring(ET.tostring(root, encoding="unicode"))
    assert parsed.get("name") == escape.xml_text(text)


def test_xml_tree_cleans_every_text_and_attribute():
    root = ET.Element("a", name="x\x00y")
    ET.SubElement(root, "b").text = "]]>\x1b[31m"
    escape.xml_tree(root)
    ET.fromstring(ET.tostring(root, encoding="unicode"))
    assert root.get("name") == "x\\x00y"


@pytest.mark.parametrize("text", HOSTILE)
def test_xml_escape_for_hand_written_xml(text):
    ET.fromstring(f'<r a="{escape.xml_escape(text)}">{escape.xml_escape(text)}</r>')
    assert "]]>" not in escape.xml_escape(text)


@pytest.mark.parametrize("text", HOSTILE)
def test_json_text_encodes_strictly(text):
    doc = escape.json_clean({"k" + text: [text, {"x": text}]})
    json.dumps(doc, ensure_ascii=False).encode("utf-8")   # no lone surrogates


@pytest.mark.parametrize("text", HOSTILE)
def test_html_text_has_no_markup(text):
    out = escape.html_text(text)
    assert "<" not in out and ">" not in out and '"' not in out and "\x1b" not in out


@pytest.mark.parametrize("text", HOSTILE)
def test_markdown_cell_cannot_break_out(text):
    cell = escape.md_text(text)
    assert "\n" not in cell and "\r" not in cell and "<" not in cell
    assert "](" not in cell                             # no link or image
    assert cell.replace("\\|", "").count("|") == 0      # stays in its table cell
    code = escape.md_code(text)
    assert code.startswith("`") and code.endswith("`") and code[1:-1].count("`") == 0
    assert code.replace("\\|", "").count("|") == 0


@pytest.mark.parametrize("text", HOSTILE)
def test_workflow_command_data_and_properties(text):
    data, prop = escape.gh_data(text), escape.gh_property(text)
    assert "\n" not in data and "\r" not in data and "\n" not in prop
    assert ":" not in prop and "," not in prop
    assert escape.gh_data("100%\n") == "100%25%0A"


def test_an_object_whose_str_raises_is_shown_by_its_type():
    class Bad:
        def __str__(self):
            raise ValueError

    assert escape.terminal(Bad()) == "<Bad>"
