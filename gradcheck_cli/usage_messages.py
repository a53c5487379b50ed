"""The option parser's error messages in plain words (the wording of typer 0.29 / click 8, see pyproject)."""

from __future__ import annotations

import re
import sys

_INVALID = re.compile(r"Invalid value for (?P<opt>'[^']+'(?: / '[^']+')*): (?P<detail>.*)", re.S)


def plain_usage_message(message: str, args: list[str] | None = None) -> str:
    """The option parser's messages in plain words: "--steps: expected a whole number, got 'abc'" instead of
    the validation library's "Input should be a valid integer, unable to parse string as an integer"."""
    m = _INVALID.fullmatch(message.strip())
    if not m:
        return message
    names = re.findall(r"'([^']+)'", m["opt"])
    opt = next((n for n in names if n.startswith("--")), names[0])
    detail = m["detail"].strip()
    got = _given_value(names, args or sys.argv[1:])
    got_part = f", got {got!r}" if got is not None else ""
    if "valid integer" in detail:
        return f"{opt}: expected a whole number{got_part}"
    if "valid number" in detail:
        return f"{opt}: expected a number{got_part}"
    bound = re.search(r"greater than or equal to (\S+)", detail)
    if bound:
        return f"{opt}: must be at least {bound[1]}{got_part}"
    bound = re.search(r"greater than (\S+)", detail)
    if bound:
        return f"{opt}: must be more than {bound[1]}{got_part}"
    choice = re.search(r"'([^']*)' is not one of (.*?)\.?$", detail)
    if choice:
        allowed = ", ".join(re.findall(r"'([^']*)'", choice[2]))
        return f"{opt}: {choice[1]!r} is not one of {allowed}"
    return f"{opt}: {detail.removeprefix('Value error, ')}"


def _given_value(names: list[str], args: list[str]) -> str | None:
    """The value given on the command line for an option (its last occurrence), if it can be found."""
    found = None
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                found = args[i + 1]
            elif a.startswith(n + "="):
                found = a[len(n) + 1:]
    return found
