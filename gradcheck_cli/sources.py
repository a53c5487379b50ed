"""Where a layer is defined in the user's code: the file and line of `self.<name> = ...`.

Used for SARIF locations, GitHub annotations and the text report. Looks only at source the user wrote
(never inside torch or site-packages); a layer whose definition cannot be found gets the line that
defines the model (its class or factory), and None when even that is unknown.
"""

from __future__ import annotations

import dis
import os
import re
import sysconfig
from pathlib import Path
from typing import Any, Callable

_LIBRARY_DIRS = tuple(str(Path(p).resolve()) for p in {sysconfig.get_paths()["purelib"],
                                                        sysconfig.get_paths()["platlib"],
                                                        sysconfig.get_paths()["stdlib"]})


def is_user_file(path: str | None) -> bool:
    if not path or path.startswith("<") or not os.path.exists(path):
        return False
    resolved = str(Path(path).resolve())
    return not resolved.startswith(_LIBRARY_DIRS)


def display_path(path: str) -> str:
    """Relative to the working directory (how SARIF and GitHub want it) when inside it, with '/'."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def _code_of(obj: Any):
    fn = getattr(obj, "__init__", None) if isinstance(obj, type) else obj
    return getattr(fn, "__code__", None)


def object_location(obj: Any) -> dict[str, Any] | None:
    """The class or factory a model spec names: {"file", "line"} of its definition."""
    import inspect

    target = obj if isinstance(obj, type) or callable(obj) and not hasattr(obj, "forward") else type(obj)
    try:
        path = inspect.getsourcefile(target)
        if not is_user_file(path):   # before reading the source: a library's module can be long to parse
            return None
        _, line = inspect.getsourcelines(target)
    except (OSError, TypeError):
        code = _code_of(target)
        if code is None:
            return None
        path, line = code.co_filename, code.co_firstlineno
    if not is_user_file(path):
        return None
    return {"file": display_path(path), "line": max(int(line), 1)}


_FUNCTIONAL = re.compile(r"^(.*)\.\w+@(\d+)$")


class _Lines:
    def __init__(self) -> None:
        self.cache: dict[str, list[str]] = {}

    def get(self, path: str) -> list[str]:
        if path not in self.cache:
            try:
                self.cache[path] = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                self.cache[path] = []
        return self.cache[path]


def _assignment_line(cls: type, attr: str, lines: _Lines) -> tuple[str, int] | None:
    """Where a class (or one of its user-defined bases) assigns `self.<attr>` / add_module("<attr>")."""
    pattern = re.compile(r"\bself\.%s\s*(:[^=]*)?=(?!=)|add_module\(\s*['\"]%s['\"]|register_module\(\s*['\"]%s['\"]"
                         % (re.escape(attr), re.escape(attr), re.escape(attr)))
    for klass in cls.__mro__:
        code = getattr(klass.__dict__.get("__init__"), "__code__", None)
        if code is None or not is_user_file(code.co_filename):
            continue
        src = lines.get(code.co_filename)
        last = max((ln for _, ln in dis.findlinestarts(code) if ln), default=code.co_firstlineno)
        for n in range(code.co_firstlineno, min(last, len(src)) + 1):
            if pattern.search(src[n - 1]):
                return code.co_filename, n
    return None


def layer_locator(model: Any, origin: dict[str, Any] | None) -> Callable[[str | None], dict[str, Any] | None]:
    """A function from a layer name (as in the statistics) to where it is defined."""
    modules = dict(model.named_modules())
    lines = _Lines()
    memo: dict[str, dict[str, Any] | None] = {}

    def locate(name: str | None) -> dict[str, Any] | None:
        if name is None or name in ("", "(model)"):
            return origin
        if name in memo:
            return memo[name]
        module_name = name
        call = _FUNCTIONAL.match(name) if name not in modules else None
        if call:   # a functional activation, "encoder.1.sigmoid@27": the call site in its owner's forward
            module_name = "" if call.group(1) == "(model)" else call.group(1)
            owner = modules.get(module_name)
            code = getattr(getattr(type(owner), "forward", None), "__code__", None) if owner is not None else None
            if code is not None and is_user_file(code.co_filename):
                memo[name] = {"file": display_path(code.co_filename), "line": int(call.group(2))}
                return memo[name]
        parts = module_name.split(".") if module_name else []
        found = None
        # The deepest definition in user code: `blocks.3.conv1` -> BasicBlock's `self.conv1 =`; a child of
        # an nn.Sequential (torch code) -> the line that creates the Sequential in its parent.
        for depth in range(len(parts), 0, -1):
            parent = modules.get(".".join(parts[:depth - 1]))
            if parent is None:
                continue
            hit = _assignment_line(type(parent), parts[depth - 1], lines)
            if hit is not None:
                found = {"file": display_path(hit[0]), "line": hit[1]}
                break
        memo[name] = found or origin
        return memo[name]

    return locate
