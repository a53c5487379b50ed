"""'path/to/file.py:NAME' or 'package.module:NAME' -> the object; models built from it."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from gradcheck_cli.errors import InputError, UserCodeError, exc_line

_FILE_MODULES: dict[str, ModuleType] = {}


_SPEC_HINTS = {
    "model": "NAME is a module class, a zero-argument factory or a module instance",
    "batch": "NAME is a function returning a batch (or a generator of batches); or give a .pt/.npz/.npy file",
    "loss": "NAME is a function (output, target) -> scalar tensor; or use cross-entropy, mse, bce-with-logits",
}


def split_spec(spec: str, what: str = "model") -> tuple[str, str]:
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name or not name.replace("_", "a").replace(".", "a").isalnum():
        raise InputError(f"bad {what} spec {spec!r}: expected 'path/to/file.py:NAME' or 'package.module:NAME'",
                         hint=_SPEC_HINTS.get(what))
    return target, name


def _looks_like_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _user_frame(exc: BaseException, path: str | None = None) -> str | None:
    """file:line of the innermost frame in the user's file (or the innermost frame at all)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    pick = None
    for fr in frames:
        if path is None or Path(fr.filename).resolve() == Path(path).resolve():
            pick = fr
    if pick is None and frames:
        pick = frames[-1]
    return f"{pick.filename}:{pick.lineno}" if pick else None


def import_file(path_text: str, what: str = "model") -> ModuleType:
    from gradcheck_cli.paths import input_file, shown

    path = Path(path_text)
    if path.suffix != ".py":
        raise InputError(f"not a Python file: {shown(path_text)}", hint="point to a .py file, e.g. model.py:build")
    input_file(path, what, not_found_hint="check the path (relative to the current directory)")
    key = str(path.resolve())
    if key in _FILE_MODULES:
        return _FILE_MODULES[key]
    mod_name = "_gradcheck_user_" + hashlib.sha1(os.fsencode(key)).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - defensive
        raise InputError(f"cannot import {path_text}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    parent = str(path.resolve().parent)
    if parent not in sys.path:
        # So the user's file can import its siblings, also lazily inside a factory (kept for the run).
        sys.path.insert(0, parent)
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(mod_name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UserCodeError(exc_line(exc), phase="import", where=_user_frame(exc, key), original=exc) from exc
    _FILE_MODULES[key] = module
    return module


def import_module(target: str) -> ModuleType:
    # `python -m gradcheck_cli` has the current directory on sys.path, the console script does not:
    # make `mymodel:build` work the same way from a project directory with both.
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            raise InputError(f"module not found: {target}",
                             hint="install it, run from its project directory, or use path/to/file.py:NAME") from None
        raise UserCodeError(exc_line(exc), phase="import", where=_user_frame(exc), original=exc) from exc
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UserCodeError(exc_line(exc), phase="import", where=_user_frame(exc), original=exc) from exc
    finally:
        if added:
            try:
                sys.path.remove(cwd)
            except ValueError:
                pass


def source_file(spec: str) -> str | None:
    """The file a spec's object comes from (the user's file, or the module's __file__)."""
    target, _ = split_spec(spec)
    if _looks_like_file(target):
        return str(Path(target).resolve())
    module = sys.modules.get(target)
    return getattr(module, "__file__", None)


def load_object(spec: str, what: str = "model") -> Any:
    target, name = split_spec(spec, what)
    module = import_file(target, what) if _looks_like_file(target) else import_module(target)
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            candidates = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, candidates, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else (
                f"it defines: {', '.join(candidates[:8])}" if candidates else None)
            raise InputError(f"{target} has no attribute {part!r} (from {what} spec {spec!r})", hint=hint)
        obj = getattr(obj, part)
    return obj


def build_model(obj: Any, spec: str):
    import torch.nn as nn

    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise InputError(f"{spec} is a {type(obj).__name__}, not an nn.Module, a Module subclass or a factory")
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        required = [p.name for p in sig.parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                           p.KEYWORD_ONLY)]
        if required:
            raise InputError(f"{spec} needs arguments ({', '.join(required)}); gradcheck calls it with none",
                             hint="point to a zero-argument factory, e.g. def build(): return Net(...)")
    try:
        model = obj()
    except (Exception, SystemExit) as exc:
        raise UserCodeError(exc_line(exc), phase="build", where=_user_frame(exc, source_file(spec)),
                            original=exc) from exc
    if not isinstance(model, nn.Module):
        raise InputError(f"{spec} returned {type(model).__name__}, not an nn.Module",
                         hint="the factory must return a torch.nn.Module")
    return model
