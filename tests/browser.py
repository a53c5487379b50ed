"""Headless Chromium for the HTML report tests: DOM measurements and screenshots (skipped without Chromium)."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    env = os.environ.get("GRADCHECK_CHROMIUM")
    if env:
        return env if shutil.which(env) or Path(env).exists() else None
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


SKIP_REASON = ("headless Chromium not found (install it, e.g. `apt-get install chromium`, or set "
               "GRADCHECK_CHROMIUM to its path) - the browser checks of the HTML report are skipped")


def _short_tmp() -> str:
    """Chromium puts Unix sockets under $TMPDIR; with a long TMPDIR their paths pass the 108-byte limit and it
    exits silently. Use a short directory for its profile and temporary files."""
    for base in ("/tmp", "/var/tmp", None):
        if base is None or (os.path.isdir(base) and os.access(base, os.W_OK)):
            return tempfile.mkdtemp(prefix="gc-", dir=base)
    raise AssertionError("unreachable")


def _run(chromium: str, args: list[str], url: str, timeout: int = 90) -> str:
    short = _short_tmp()
    try:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--disable-extensions", f"--user-data-dir={short}", *args, url]
        env = dict(os.environ, TMPDIR=short)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        return r.stdout
    finally:
        shutil.rmtree(short, ignore_errors=True)


# Loads the report in an iframe of the given width (a headless window cannot be narrower than ~500 px), then
# writes the measurements into <pre id="result">: horizontal overflow of the page, the smallest on-screen
# font size of the text in the charts, whether the dark colour scheme applied.
_MEASURE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="f" style="width:%(width)dpx;height:900px;border:0" srcdoc="%(doc)s"></iframe>
<pre id="result"></pre>
<script>
window.onload = function () {
  var d = document.getElementById('f').contentDocument, w = d.defaultView;
  var sizes = [];
  d.querySelectorAll('svg.chart text').forEach(function (t) {
    var m = t.getScreenCTM(); sizes.push(parseFloat(w.getComputedStyle(t).fontSize) * (m ? Math.hypot(m.a, m.b) : 1));
  });
  document.getElementById('result').textContent = JSON.stringify({
    viewport: d.documentElement.clientWidth, scroll_width: d.documentElement.scrollWidth,
    body_scroll_width: d.body.scrollWidth, min_chart_font_px: sizes.length ? Math.min.apply(null, sizes) : null,
    chart_texts: sizes.length, dark: w.matchMedia('(prefers-color-scheme: dark)').matches,
    background: w.getComputedStyle(d.body).backgroundColor});
};
</script></body></html>"""


def measure(chromium: str, doc: str, width: int, tmp: Path, dark: bool = False) -> dict:
    page = tmp / f"measure-{width}{'-dark' if dark else ''}.html"
    page.write_text(_MEASURE % {"width": width, "doc": html.escape(doc, quote=True)}, encoding="utf-8")
    args = ["--window-size=1400,1000", "--virtual-time-budget=5000", "--dump-dom"]
    if dark:
        args.append("--blink-settings=preferredColorScheme=0")
    out = _run(chromium, args, page.as_uri())
    m = re.search(r'<pre id="result">(.*?)</pre>', out, re.S)
    assert m and m.group(1).strip(), f"no measurement from Chromium: {out[-500:]!r}"
    return json.loads(html.unescape(m.group(1)))


def screenshot(chromium: str, doc_path: Path, png: Path, width: int, dark: bool = False, height: int = 2400) -> Path:
    args = [f"--window-size={width},{height}", f"--screenshot={png}", "--virtual-time-budget=3000"]
    if dark:
        args.append("--blink-settings=preferredColorScheme=0")
    _run(chromium, args, doc_path.as_uri())
    return png


def png_size(png: Path) -> tuple[int, int]:
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
