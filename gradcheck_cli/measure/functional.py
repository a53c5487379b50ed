"""The watch over functional activations (torch.sigmoid / torch.tanh / F.relu inside a forward) and,
in a diagnosis pass, over the ops that turn finite inputs into NaN/Inf; the user-code site lookup."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from gradcheck_cli import stats as S
from gradcheck_cli.measure import kernels as K
from gradcheck_cli.measure.hooks import Hooks
from gradcheck_cli.measure.inventory import Layer

FUNCTIONAL: dict[Any, str] = {
    torch.sigmoid: S.SIGMOID, torch.Tensor.sigmoid: S.SIGMOID, F.sigmoid: S.SIGMOID,
    torch.tanh: S.TANH, torch.Tensor.tanh: S.TANH, F.tanh: S.TANH,
    torch.relu: S.RELU, torch.Tensor.relu: S.RELU, F.relu: S.RELU, F.relu6: S.RELU,
    torch.relu_: S.RELU, torch.Tensor.relu_: S.RELU, F.relu_: S.RELU,
}
FUNC_NAMES = {S.SIGMOID: "sigmoid", S.TANH: "tanh", S.RELU: "relu"}

# Operations that turn finite inputs into NaN/Inf (log(0), x/0, exp overflow, sqrt'(0) = inf, ...).
# Their outputs (forward) and output gradients (backward) are checked so a NaN is traced to its line.
RISKY: dict[Any, str] = {}
for _name in ("log", "log2", "log10", "log1p", "exp", "expm1", "sqrt", "rsqrt", "reciprocal", "pow", "div",
              "true_divide", "acos", "asin", "atanh", "acosh", "logit"):
    for _owner in (torch, torch.Tensor):
        _fn = getattr(_owner, _name, None)
        if _fn is not None:
            RISKY[_fn] = _name
for _dunder, _name in (("__truediv__", "div"), ("__rtruediv__", "div"), ("__pow__", "pow"),
                       ("__rpow__", "pow")):
    RISKY[getattr(torch.Tensor, _dunder)] = _name

_TORCH_DIR = os.path.dirname(torch.__file__)
_SELF_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # gradcheck_cli/


class FunctionalState:
    """Functional-activation layers and watched-op call sites found so far in the run."""

    def __init__(self, hooks: Hooks) -> None:
        self.hooks = hooks
        self.inv = hooks.inv
        self.functional: dict[tuple, Layer | None] = {}   # (kind, call site) -> layer, None = not ours
        self.op_sites: dict[tuple, dict[str, Any]] = {}
        self.op_list: list[dict[str, Any]] = []

    def found_any(self) -> bool:
        return any(layer is not None for layer in self.functional.values())

    def layer_for(self, kind: str) -> Layer | None:
        # Keyed by call site (a cheap stack walk); the owning module is looked up once per site.
        site = user_site()
        key = (kind, site)
        if key not in self.functional:
            owner = self.owner()
            if owner is not None and id(owner) in self.inv.activation_modules:
                self.functional[key] = None   # e.g. nn.Sigmoid calling torch.sigmoid: measured as a module
            else:
                label = f"{self.inv.owner_name(owner) or '(model)'}.{FUNC_NAMES[kind]}@{site[1]}"
                self.functional[key] = self.inv.add_functional(label, f"{FUNC_NAMES[kind]}()", kind)
        return self.functional[key]

    def on_functional(self, kind: str, out: torch.Tensor, pre: torch.Tensor | None = None) -> None:
        layer = self.layer_for(kind)
        if layer is not None:
            self.hooks.on_output(layer, out, pre)

    def relu_inplace(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """torch.relu_ / F.relu(x, inplace=True): the input's statistics are taken before it is
        overwritten, then the call runs and its output is measured as usual."""
        layer = self.layer_for(S.RELU)
        if layer is None:
            return func(*args, **kwargs)
        self.hooks.track_pre(layer, args[0])
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            was, layer.pre_hooked = layer.pre_hooked, True   # measured above: the output hook must not redo it
            try:
                self.hooks.on_output(layer, out)
            finally:
                layer.pre_hooked = was
        return out

    def on_risky(self, op: str, out: torch.Tensor) -> None:
        if not out.is_floating_point():
            return
        site = user_site()
        key = (op, site)
        entry = self.op_sites.get(key)
        if entry is None:
            owner_name = self.inv.owner_name(self.owner()) or "(model)"
            entry = {"op": op, "file": display_path(site[0]), "line": site[1], "module": owner_name,
                     "label": f"{op}() at {os.path.basename(site[0])}:{site[1]} in `{owner_name}`",
                     "forward_nonfinite": 0, "backward_nonfinite": 0, "index": len(self.op_list)}
            self.op_sites[key] = entry
            self.op_list.append(entry)
        slot = ("op", entry["index"])
        hooks = self.hooks
        hooks.sink.add(slot, "op", K.has_nonfinite(out.detach()), next(hooks.fwd_seq))
        # Backward: the gradient w.r.t. the op's *inputs* is where sqrt'(0) = inf or d(a/b)/db = -a/b^2
        # turn up first (the gradient w.r.t. its output is still finite).
        node = out.grad_fn
        if node is not None:
            sink = hooks.sink

            def hook(grad_inputs: tuple, grad_outputs: tuple) -> None:
                gs = [g for g in grad_inputs if isinstance(g, torch.Tensor)]
                if gs:
                    bad = torch.stack([K.has_nonfinite(g) for g in gs]).amax()
                    sink.add(slot, "opg", bad, next(hooks.bwd_seq))
            hooks.tensor_handles.append(node.register_hook(hook))   # removed at the end of the pass

    def owner(self) -> nn.Module | None:
        """The innermost module of this model whose forward is on the stack (reads frame locals: called
        once per call site, not per call)."""
        names = self.inv.module_names
        frame = sys._getframe(2)
        while frame is not None:
            obj = frame.f_locals.get("self")
            if obj is not None and id(obj) in names and isinstance(obj, nn.Module):
                return obj
            frame = frame.f_back
        return None


def module_at(exc: BaseException, module_names: dict[int, str]) -> str | None:
    """Name the innermost module of this model in whose code the exception was raised."""
    where = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        obj = frame.f_locals.get("self")
        if obj is not None and id(obj) in module_names and isinstance(obj, nn.Module):
            where = f"`{module_names[id(obj)] or '(model)'}` ({type(obj).__name__})"
    return where


def display_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def user_site() -> tuple[str, int]:
    """File and line of the innermost caller outside torch and gradcheck."""
    frame = sys._getframe(2)
    while frame is not None:
        fname = frame.f_code.co_filename
        if not fname.startswith(_TORCH_DIR) and not fname.startswith(_SELF_DIR):
            return (fname, frame.f_lineno)
        frame = frame.f_back
    return ("?", 0)


class FunctionalWatch(TorchFunctionMode):
    """Sees torch.sigmoid / torch.tanh / F.relu (and their Tensor-method forms) called inside forward; in a
    diagnosis pass also the risky ops."""

    def __init__(self, state: FunctionalState) -> None:
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        try:
            kind = FUNCTIONAL.get(func)
        except TypeError:   # unhashable callable
            kind = None
        if kind == S.RELU and args and type(args[0]) is torch.Tensor and _overwrites_input(func, args, kwargs):
            return self.state.relu_inplace(func, args, kwargs)
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            if kind is not None:
                pre = args[0] if kind == S.RELU and args and type(args[0]) is torch.Tensor else None
                self.state.on_functional(kind, out, pre)
            elif self.state.hooks.diagnose:
                try:
                    op = RISKY.get(func)
                except TypeError:
                    op = None
                if op is not None:
                    self.state.on_risky(op, out)
        return out


_RELU_INPLACE = {torch.relu_, torch.Tensor.relu_, F.relu_}


def _overwrites_input(func: Any, args: tuple, kwargs: dict) -> bool:
    if func in _RELU_INPLACE:
        return True
    return bool(kwargs.get("inplace", len(args) > 1 and args[1] is True))
