"""Escaping of user-controlled text (layer names, module types, model specs, file paths, exception messages,
reasons) for every output format. One place, so that every renderer escapes the same way.

A model is code the user controls: a layer registered as ``add_module("a\\n::error ::x", ...)``, a class
whose name holds an ANSI escape, or an exception message with ``]]>`` must not change the meaning of a
report. Each function takes any object (``str()`` of it is escaped) and never raises.

- ``terminal``: ANSI/CSI/OSC and other escape sequences removed, other control characters (newlines too)
  shown as ``\\xNN``; lone surrogates (undecodable file names) shown as ``\\xNN`` of their byte.
- ``xml_text``: characters XML 1.0 cannot hold (C0 controls but tab/newline/CR, lone surrogates, U+FFFE/
  U+FFFF) shown as ``\\xNN``/``\\uNNNN``; ``&``, ``<``, ``>`` and quotes are left to the XML serializer.
  ``xml_escape`` also does those, for hand-written XML.
- ``json_text``: lone surrogates shown as ``\\xNN`` (JSON/SARIF writers handle the rest).
- ``html_text``: ``html.escape`` (quotes too) of the terminal-safe text.
- ``md_text`` / ``md_code``: Markdown table cell and inline code: one line, ``|`` escaped, no HTML, no
  links or images.
- ``gh_data`` / ``gh_property``: GitHub Actions workflow command data and properties (``%``, CR, LF, and
  ``:``/``,`` in properties percent-encoded).
"""

from __future__ import annotations

import html as _html
import re
from typing import Any

# ESC-introduced sequences: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), other string commands
# (DCS, SOS, PM, APC ... ESC \), and two-character escapes. The 8-bit C1 forms (0x9b CSI, 0x9d OSC) too.
_ANSI = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"          # CSI
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"   # OSC
    r"|(?:\x1b[PX^_]|[\x90\x98\x9e\x9f])[^\x1b\x9c]*(?:\x1b\\|\x9c)?"   # DCS, SOS, PM, APC
    r"|\x1b[ -/]*[0-~]?"                          # other escapes (ESC c, ESC ( B, ...)
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_XML_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception:   # an object whose __str__ raises
        return f"<{type(value).__name__}>"


def _hex(m: re.Match) -> str:
    c = m.group(0)
    n = ord(c)
    if 0xDC80 <= n <= 0xDCFF:   # surrogateescape: the undecodable byte itself
        return f"\\x{n - 0xDC00:02x}"
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def surrogates(value: Any) -> str:
    """Lone surrogates (from file names that are not UTF-8) as \\xNN: the text can then be encoded."""
    return _SURROGATE.sub(_hex, _str(value))


def terminal(value: Any) -> str:
    """Safe to print on a terminal or a CI log: no escape sequences, no control characters, one line."""
    s = _ANSI.sub("", _str(value))
    return surrogates(_CONTROL.sub(_hex, s))


def xml_text(value: Any) -> str:
    """Only characters XML 1.0 can hold (for ElementTree, which escapes & < > itself)."""
    return _XML_BAD.sub(_hex, _str(value))


def xml_escape(value: Any) -> str:
    """Text or attribute value for hand-written XML: legal characters, markup escaped, `]]>` broken up."""
    return _html.escape(xml_text(value), quote=True)


def json_text(value: Any) -> str:
    return surrogates(value)


def html_text(value: Any) -> str:
    return _html.escape(terminal(value), quote=True)


def md_text(value: Any) -> str:
    """Safe inside a Markdown table cell or a line of prose: one line, pipes escaped, no HTML, no links."""
    s = terminal(value).replace("\\x0d", " ").replace("\\x0a", " ")
    s = s.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("](", "]\\(").replace("[", "\\[") if "](" in s else s


def md_code(value: Any) -> str:
    """`inline code` that cannot be closed early (backticks become ') and stays in its table cell."""
    s = terminal(value).replace("\\x0d", " ").replace("\\x0a", " ")
    return "`" + s.replace("`", "'").replace("|", "\\|") + "`"


def gh_data(value: Any) -> str:
    """The message of a workflow command (`::error ...::MESSAGE`): %, CR and LF percent-encoded."""
    s = surrogates(value)
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def gh_property(value: Any) -> str:
    """A workflow command property value (file=, title=): also : and , percent-encoded."""
    return gh_data(value).replace(":", "%3A").replace(",", "%2C")


def json_clean(obj: Any) -> Any:
    """A JSON-ready document with every string (keys too) passed through `json_text`."""
    if isinstance(obj, str):
        return json_text(obj)
    if isinstance(obj, dict):
        return {json_clean(k) if isinstance(k, str) else k: json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    return obj


def xml_tree(root: Any) -> Any:
    """An ElementTree element with every text, tail and attribute value passed through `xml_text`."""
    for el in root.iter():
        if el.text is not None:
            el.text = xml_text(el.text)
        if el.tail is not None:
            el.tail = xml_text(el.tail)
        for k, v in list(el.attrib.items()):
            el.attrib[k] = xml_text(v)
    return root
