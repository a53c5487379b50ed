"""The HTML report in a real browser (headless Chromium): no horizontal overflow at 400 px, chart text at least
9 px on screen, the dark theme applies; screenshots at 1280 and 400 px, light and dark.

Skipped, with the reason, where Chromium is not installed. Set GRADCHECK_SCREENSHOTS=DIR to keep the
screenshots for a look (they are written to a temporary directory otherwise).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser import SKIP_REASON, find_chromium, measure, png_size, screenshot
from report_fixtures import html_of

CHROMIUM = find_chromium()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)]


@pytest.mark.parametrize("name", ["gpt2", "rnn", "mlp100"])
def test_no_horizontal_overflow_at_400px_and_readable_chart_text(name, tmp_path):
    doc = html_of(name)
    for width, dark in ((400, False), (400, True), (1280, False)):
        m = measure(CHROMIUM, doc, width, tmp_path, dark=dark)
        assert m["viewport"] == width, m
        assert m["scroll_width"] <= width, (width, m)          # the page never scrolls sideways
        assert m["chart_texts"] > 0, m
        assert m["min_chart_font_px"] >= 9, m                 # labels are not shrunk to fit
        assert m["dark"] == dark, m
        assert (m["background"] == "rgb(255, 255, 255)") != dark, m


@pytest.mark.parametrize("name", ["gpt2", "rnn"])
def test_screenshots_light_and_dark(name, tmp_path):
    out = Path(os.environ.get("GRADCHECK_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    page = out / f"{name}.html"
    page.write_text(html_of(name), encoding="utf-8")
    shots = {}
    for width in (1280, 400):
        for dark in (False, True):
            png = screenshot(CHROMIUM, page, out / f"{name}-{width}{'-dark' if dark else ''}.png", width, dark,
                             height=1600)
            assert png.exists(), png
            assert png_size(png) == (width, 1600)
            shots[width, dark] = png.read_bytes()
    assert shots[1280, False] != shots[1280, True] and shots[400, False] != shots[400, True]
