"""Instrumented forward/backward passes, reduced to per-layer statistics (stats.RunStats).

Design (see README "Architecture"):
- `instrument(model)` is a context manager: it registers forward hooks (and, for recurrent layers, forward
  pre-hooks) on every module that owns parameters or is an activation, snapshots what a run can change
  (training flags, buffers such as BatchNorm running stats, the global RNG state, the device), and in
  `finally` removes every handle and restores all of it. Gradients are taken with `torch.autograd.grad`,
  so the user's `.grad` fields are never written.
- Every statistic is a small tensor computed on the tensor's own device when the hook fires; the
  activation or gradient itself is not kept. A step's statistics are concatenated and moved to the host
  in one transfer at the end of the pass; per-unit masks and per-time-step profiles stay on the device
  until the end of the run and come back in one more transfer.
"""

from __future__ import annotations

import gc
import itertools
import math
import os
import sys
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from gradcheck_cli import stats as S
from gradcheck_cli.deadline import RunTimeout, set_phase
from gradcheck_cli.errors import InputError, UserCodeError, exc_line
from gradcheck_cli.losses import primary_tensor
from gradcheck_cli.seeding import seed_all

# ----------------------------------------------------------------------------------------------------------
# What counts as an activation
# ----------------------------------------------------------------------------------------------------------

_RELU_TYPES = (nn.ReLU, nn.ReLU6)
_OTHER_ACT_TYPES = (
    nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.GLU,
    nn.Softmax, nn.LogSoftmax,
)
_ACT_NAME_HINTS = ("Activation", "GELU", "SiLU", "Swish", "Mish", "QuickGELU")

_FUNCTIONAL: dict[Any, str] = {
    torch.sigmoid: S.SIGMOID, torch.Tensor.sigmoid: S.SIGMOID, F.sigmoid: S.SIGMOID,
    torch.tanh: S.TANH, torch.Tensor.tanh: S.TANH, F.tanh: S.TANH,
    torch.relu: S.RELU, torch.Tensor.relu: S.RELU, F.relu: S.RELU, F.relu6: S.RELU,
    torch.relu_: S.RELU, torch.Tensor.relu_: S.RELU, F.relu_: S.RELU,
}
_FUNC_NAMES = {S.SIGMOID: "sigmoid", S.TANH: "tanh", S.RELU: "relu"}

# Operations that turn finite inputs into NaN/Inf (log(0), x/0, exp overflow, sqrt'(0) = inf, ...).
# Their outputs (forward) and output gradients (backward) are checked so a NaN is traced to its line.
_RISKY: dict[Any, str] = {}
for _name in ("log", "log2", "log10", "log1p", "exp", "expm1", "sqrt", "rsqrt", "reciprocal", "pow", "div",
              "true_divide", "acos", "asin", "atanh", "acosh", "logit"):
    for _owner in (torch, torch.Tensor):
        _fn = getattr(_owner, _name, None)
        if _fn is not None:
            _RISKY[_fn] = _name
for _dunder, _name in (("__truediv__", "div"), ("__rtruediv__", "div"), ("__pow__", "pow"),
                       ("__rpow__", "pow")):
    _RISKY[getattr(torch.Tensor, _dunder)] = _name

# Saturation: the local derivative is below 1% of its maximum.
#   sigmoid: s(1-s) < 0.0025  <=>  |s - 0.5| > 0.4975   (|pre-activation| > ~6.0)
#   tanh:    1 - t^2 < 0.01   <=>  |t| > 0.99499        (|pre-activation| > ~3.0)
SIGMOID_SAT = 0.497494
TANH_SAT = 0.994987

_RECURRENT_TYPES = (nn.RNN, nn.LSTM, nn.GRU)
_CHANNEL_FIRST_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                        nn.ConvTranspose3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                        nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm)
_PROFILE_POINTS = 64


def activation_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Sigmoid):
        return S.SIGMOID
    if isinstance(module, nn.Tanh):
        return S.TANH
    if isinstance(module, _RELU_TYPES):
        return S.RELU
    if isinstance(module, _OTHER_ACT_TYPES):
        return S.OTHER_ACT
    name = type(module).__name__
    if not any(True for _ in module.children()) and any(h in name for h in _ACT_NAME_HINTS):
        return S.OTHER_ACT
    return None


# ----------------------------------------------------------------------------------------------------------
# Per-step recorder: small device tensors, one host transfer per pass
# ----------------------------------------------------------------------------------------------------------

class _Recorder:
    """The statistics of one pass, as small tensors on the device; `flush` brings them to the host in one
    transfer (one stack or cat, one .cpu()).

    slot: a layer index, ("op", i) for a watched op call site, or None for run-level values.
    seq: order of the event within the pass (forward or backward), used to find where NaN/Inf start.
    """

    def __init__(self) -> None:
        self.scalars: list[torch.Tensor] = []          # 0-d float32 tensors
        self.scalar_keys: list[tuple[Any, str, int]] = []
        self.vectors: list[torch.Tensor] = []
        self.vector_keys: list[tuple[Any, str, int]] = []

    def add(self, slot: Any, name: str, value: torch.Tensor, seq: int = 0) -> None:
        """A 0-d float32 statistic (the caller computes it with dtype=torch.float32)."""
        self.scalars.append(value)
        self.scalar_keys.append((slot, name, seq))

    def add_vector(self, slot: Any, name: str, value: torch.Tensor) -> None:
        self.vectors.append(value.detach().reshape(-1).to(torch.float32))
        self.vector_keys.append((slot, name, 0))

    def flush(self) -> list[tuple[Any, str, list[float], int]]:
        parts = []
        if self.scalars:
            parts.append(torch.stack(self.scalars))
        parts += self.vectors
        if not parts:
            return []
        dev = parts[0].device
        flat = torch.cat([p if p.device == dev else p.to(dev) for p in parts]).cpu().tolist()  # one transfer
        out = [(slot, name, [flat[i]], seq) for i, (slot, name, seq) in enumerate(self.scalar_keys)]
        pos = len(self.scalars)
        for v, (slot, name, seq) in zip(self.vectors, self.vector_keys):
            n = v.numel()
            out.append((slot, name, flat[pos:pos + n], seq))
            pos += n
        self.scalars, self.scalar_keys, self.vectors, self.vector_keys = [], [], [], []
        return out


def _sumsq(t: torch.Tensor) -> torch.Tensor:
    """Sum of squares (a 0-d float32 tensor; the squared L2 norm), which is also the NaN/Inf detector: it is
    non-finite exactly when the tensor holds NaN/Inf, or values so large (around 1e19 and up) that their
    squares overflow float32, which a float32 model's next normalisation or loss would overflow on too.
    One kernel per tensor (counting with isfinite() costs ~10x more); on the CPU a BLAS dot product is
    ~1.8x faster than vector_norm for contiguous float32 tensors."""
    if t.is_sparse:
        t = t.coalesce().values()
    if t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu":
        flat = t.view(-1)
        return torch.dot(flat, flat)
    if t.dtype in (torch.float64, torch.complex128):
        return torch.linalg.vector_norm(t).square().to(torch.float32)
    return torch.linalg.vector_norm(t, dtype=torch.float32).square()


def _has_nonfinite(t: torch.Tensor) -> torch.Tensor:
    """1.0 when the tensor holds NaN/Inf, else 0.0: exact (no overflow), used in the diagnosis pass."""
    if t.is_sparse:
        t = t.coalesce().values()
    return torch.isfinite(t).logical_not_().any().to(torch.float32)


def _sumsq_many(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Sums of squares of many tensors as one float32 vector: one fused _foreach_norm launch on a GPU,
    BLAS dot products on the CPU (where _foreach_norm is a loop over vector_norm anyway)."""
    if (tensors and tensors[0].device.type != "cpu"
            and all(t.dtype == torch.float32 and not t.is_sparse for t in tensors)):
        return torch.stack(torch._foreach_norm(tensors, 2)).square()
    return torch.stack([_sumsq(t) for t in tensors])


def _nonfinite(t: torch.Tensor) -> torch.Tensor:
    """Count of NaN/Inf values (used only for the input batch, once per pass)."""
    return torch.isfinite(t).logical_not_().sum(dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------
# Instrumentation
# ----------------------------------------------------------------------------------------------------------

@dataclass
class _Layer:
    slot: int
    name: str
    module: nn.Module | None
    stats: S.LayerStats
    kind: str | None
    owned: list[int] = field(default_factory=list)      # indexes into the trainable-parameter list
    first_call: int | None = None
    all_alive: bool = False   # every unit has been non-zero at least once: nothing left to track
    alive_dims: tuple[int, ...] | None = None
    alive_ndim: int = -1
    alive: torch.Tensor | None = None
    alive_bad: bool = False
    sat_total: int = 0
    time_sq: torch.Tensor | None = None
    # per-step accumulators
    step_calls: int = 0
    grad_sq: float = 0.0
    grad_seen: bool = False
    # over the run
    grad_norms: list[float] = field(default_factory=list)
    pgrad_norms: list[float] = field(default_factory=list)
    calls_total: int = 0
    sat_count: float = 0.0
    grad_hook: Callable | None = None


class Instrumentation:
    """Hooks on one model; use through `instrument(model)`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.rec = _Recorder()
        self.handles: list[Any] = []
        self.tensor_handles: list[Any] = []   # hooks on tensors of the current pass; removed after it
        self.layers: list[_Layer] = []
        self.by_module: dict[int, _Layer] = {}
        self.functional: dict[tuple, _Layer | None] = {}   # (kind, call site) -> layer, None = not ours
        self.module_names: dict[int, str] = {}
        self.activation_modules: set[int] = set()
        self.extra_inputs: list[torch.Tensor] = []
        self._call_counter = itertools.count()    # first-call order over the run (depth order)
        self._fwd_seq = itertools.count()         # event order within a pass
        self._bwd_counter = itertools.count()
        self.op_sites: dict[tuple, dict[str, Any]] = {}
        self.op_list: list[dict[str, Any]] = []
        self.last_param_type: type | None = None
        self.notes: list[str] = []
        self.first_nonfinite_forward: str | None = None
        self.first_nonfinite_backward: str | None = None
        self.diagnose = False         # a diagnosis pass: trace NaN/Inf through outputs and risky ops
        self.step_nonfinite = False   # the last pass saw a non-finite output gradient

        lazy = [n for n, p in model.named_parameters() if isinstance(p, nn.parameter.UninitializedParameter)]
        if lazy:
            raise InputError(f"the model has uninitialised (lazy) parameters: {', '.join(lazy[:3])}",
                             hint="run one forward pass on a real batch after building it, before gradcheck")
        # Unique parameters, each assigned to its first owner (tied weights are counted once).
        self.param_names: list[str] = []
        self.params: list[nn.Parameter] = []
        owner_of: dict[int, str] = {}
        for pname, p in model.named_parameters():
            owner_of[id(p)] = pname.rsplit(".", 1)[0] if "." in pname else ""
            if p.requires_grad:
                self.param_names.append(pname)
                self.params.append(p)
        self.all_param_count = sum(p.numel() for p in model.parameters())
        index_of = {id(p): i for i, p in enumerate(self.params)}

        for name, mod in model.named_modules():
            self.module_names[id(mod)] = name
            if ".parametrizations" in f".{name}" or type(mod).__name__ == "ParametrizationList":
                continue   # torch.nn.utils.parametrize internals: measured through the owning module
            direct = list(mod.parameters(recurse=False))
            kind = activation_kind(mod)
            if kind is not None:
                self.activation_modules.add(id(mod))
            if not direct and kind is None and mod is not model:
                continue
            own = [p for p in direct if owner_of.get(id(p)) == name]
            role = S.PARAM if direct else (S.ACTIVATION if kind is not None else S.MODEL)
            rec_type = type(mod).__name__ if isinstance(mod, _RECURRENT_TYPES) else None
            st = S.LayerStats(
                index=-1, name=name, type=type(mod).__name__, role=role, activation=kind, recurrent=rec_type,
                params=sum(p.numel() for p in own),
                trainable_params=sum(p.numel() for p in own if p.requires_grad),
                bidirectional=bool(getattr(mod, "bidirectional", False)) if rec_type else None,
            )
            layer = _Layer(slot=len(self.layers), name=name, module=mod, stats=st, kind=kind,
                           owned=[index_of[id(p)] for p in own if id(p) in index_of])
            self.layers.append(layer)
            self.by_module[id(mod)] = layer

    # -- hooks -----------------------------------------------------------------------------------------------

    def attach(self) -> None:
        for layer in list(self.layers):
            mod = layer.module
            self.handles.append(mod.register_forward_hook(self._make_forward_hook(layer)))
            if layer.stats.recurrent:
                self.handles.append(mod.register_forward_pre_hook(self._make_rnn_pre_hook(layer)))

    def detach(self) -> None:
        self.remove_tensor_hooks()
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def remove_tensor_hooks(self) -> None:
        for h in self.tensor_handles:
            h.remove()
        self.tensor_handles.clear()

    def _make_forward_hook(self, layer: _Layer) -> Callable:
        is_param = layer.stats.role == S.PARAM
        on_output = self._on_output

        def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
            if is_param:
                self.last_param_type = type(mod)
            out = output if type(output) is torch.Tensor else primary_tensor(output)
            if out is not None:
                on_output(layer, out)
        return hook

    def _on_output(self, layer: _Layer, out: torch.Tensor) -> None:
        if layer.first_call is None:
            layer.first_call = next(self._call_counter)
        if self.diagnose:
            # Diagnosis pass: every output is checked, in forward order, to find where NaN/Inf start.
            if out.is_floating_point() or out.is_complex():
                self.rec.add(layer.slot, "out", _has_nonfinite(out.detach()), next(self._fwd_seq))
        else:
            layer.step_calls += 1
            if not out.is_floating_point():
                return
            kind = layer.kind
            if kind == S.SIGMOID:
                self.rec.add(layer.slot, "sat", (out.detach() - 0.5).abs_().gt_(SIGMOID_SAT).sum(dtype=torch.float32))
                layer.sat_total += out.numel()
            elif kind == S.TANH:
                self.rec.add(layer.slot, "sat", out.detach().abs().gt_(TANH_SAT).sum(dtype=torch.float32))
                layer.sat_total += out.numel()
            elif kind == S.RELU and out.dim() >= 1 and not layer.alive_bad and not layer.all_alive:
                self._track_alive(layer, out.detach())
        if out.requires_grad:
            if layer.grad_hook is None:
                layer.grad_hook = self._make_grad_hook(layer)
            self.tensor_handles.append(out.register_hook(layer.grad_hook))

    def _track_alive(self, layer: _Layer, d: torch.Tensor) -> None:
        """Running per-unit maximum of the output (units: features, or channels for convolutions);
        a unit is dead when its maximum is still <= 0 at the end of the run."""
        ndim = d.dim()
        if layer.alive_dims is None or layer.alive_ndim != ndim:
            channel_first = ndim >= 4 or (ndim == 3 and self.last_param_type is not None
                                          and issubclass(self.last_param_type, _CHANNEL_FIRST_TYPES))
            unit_dim = 1 if channel_first and ndim >= 2 else ndim - 1
            layer.alive_dims = tuple(i for i in range(ndim) if i != unit_dim)
            layer.alive_ndim = ndim
        peak = torch.amax(d, layer.alive_dims) if layer.alive_dims else d.clone()
        if layer.alive is None:
            layer.alive = peak
        elif layer.alive.shape == peak.shape:
            torch.maximum(layer.alive, peak, out=layer.alive)
        else:   # the layer's width changed between calls: the per-unit view is meaningless
            layer.alive_bad = True
            layer.alive = None
            self.notes.append(f"`{layer.name}` is called on outputs of different widths (one module shared by "
                              "several layers): its dead units are not measured; use one activation module "
                              "per layer to get them")

    def _make_grad_hook(self, layer: _Layer) -> Callable:
        slot = layer.slot

        def hook(g: torch.Tensor) -> None:
            if self.diagnose:
                self.rec.add(slot, "g", _has_nonfinite(g), next(self._bwd_counter))
            else:
                self.rec.add(slot, "g", _sumsq(g), next(self._bwd_counter))
        return hook

    def _make_rnn_pre_hook(self, layer: _Layer) -> Callable:
        def pre_hook(mod: nn.Module, args: tuple) -> tuple | None:
            if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
                return None   # PackedSequence or unusual input: no per-time-step profile
            if self.diagnose:
                return None
            x = args[0]
            batch_first = bool(getattr(mod, "batch_first", False))
            time_dim = 1 if (batch_first and x.dim() == 3) else 0
            if not x.requires_grad:
                # The raw input needs no gradient for training; ask for one so we see it per time step.
                x = x.detach().requires_grad_(True)
                self.extra_inputs.append(x)
            else:
                # A fresh view: its gradient is what flows back through this layer only, not the input's
                # total gradient (which a skip connection around the RNN would add to).
                x = x.view_as(x)
            self.tensor_handles.append(x.register_hook(self._make_time_hook(layer, time_dim)))
            return (x,) + tuple(args[1:])
        return pre_hook

    def _make_time_hook(self, layer: _Layer, time_dim: int) -> Callable:
        def hook(g: torch.Tensor) -> None:
            g = g.detach()
            dims = [d for d in range(g.dim()) if d != time_dim]
            per_t = g.float().pow(2).sum(dim=dims) if dims else g.float().pow(2)
            if layer.time_sq is None:
                layer.time_sq = per_t
            elif layer.time_sq.shape == per_t.shape:
                layer.time_sq = layer.time_sq + per_t
        return hook

    # -- functional activations ----------------------------------------------------------------------------

    def on_functional(self, kind: str, out: torch.Tensor) -> None:
        # Keyed by call site (a cheap stack walk); the owning module is looked up once per site.
        site = _user_site()
        key = (kind, site)
        if key not in self.functional:
            owner = self._owner()
            if owner is not None and id(owner) in self.activation_modules:
                self.functional[key] = None   # e.g. nn.Sigmoid calling torch.sigmoid: measured as a module
            else:
                owner_name = self.module_names.get(id(owner), "") if owner is not None else ""
                label = f"{owner_name or '(model)'}.{_FUNC_NAMES[kind]}@{site[1]}"
                st = S.LayerStats(index=-1, name=label, type=f"{_FUNC_NAMES[kind]}()", role=S.FUNCTIONAL,
                                  activation=kind)
                layer = _Layer(slot=len(self.layers), name=label, module=None, stats=st, kind=kind)
                self.layers.append(layer)
                self.functional[key] = layer
        layer = self.functional[key]
        if layer is not None:
            self._on_output(layer, out)

    def on_risky(self, op: str, out: torch.Tensor, args: tuple, kwargs: dict | None) -> None:
        if not out.is_floating_point():
            return
        site = _user_site()
        key = (op, site)
        entry = self.op_sites.get(key)
        if entry is None:
            owner = self._owner()
            owner_name = self.module_names.get(id(owner), "") if owner is not None else ""
            entry = {"op": op, "file": _display_path(site[0]), "line": site[1], "module": owner_name or "(model)",
                     "label": f"{op}() at {os.path.basename(site[0])}:{site[1]} in `{owner_name or '(model)'}`",
                     "forward_nonfinite": 0, "backward_nonfinite": 0, "index": len(self.op_list)}
            self.op_sites[key] = entry
            self.op_list.append(entry)
        slot = ("op", entry["index"])
        self.rec.add(slot, "op", _has_nonfinite(out.detach()), next(self._fwd_seq))
        # Backward: the gradient w.r.t. the op's *inputs* is where sqrt'(0) = inf or d(a/b)/db = -a/b^2
        # turn up first (the gradient w.r.t. its output is still finite).
        node = out.grad_fn
        if node is not None:
            def hook(grad_inputs: tuple, grad_outputs: tuple) -> None:
                gs = [g for g in grad_inputs if isinstance(g, torch.Tensor)]
                if gs:
                    bad = torch.stack([_has_nonfinite(g) for g in gs]).amax()
                    self.rec.add(slot, "opg", bad, next(self._bwd_counter))
            node.register_hook(hook)   # lives and dies with this pass's graph

    def _owner(self) -> nn.Module | None:
        """The innermost module of this model whose forward is on the stack (reads frame locals: called
        once per call site, not per call)."""
        frame = sys._getframe(2)
        while frame is not None:
            obj = frame.f_locals.get("self")
            if obj is not None and id(obj) in self.module_names and isinstance(obj, nn.Module):
                return obj
            frame = frame.f_back
        return None

    def module_at(self, exc: BaseException) -> str | None:
        """Name the innermost module of this model in whose code the exception was raised."""
        where = None
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            obj = frame.f_locals.get("self")
            if obj is not None and id(obj) in self.module_names and isinstance(obj, nn.Module):
                name = self.module_names[id(obj)]
                where = f"`{name or '(model)'}` ({type(obj).__name__})"
        return where

    # -- steps -------------------------------------------------------------------------------------------------

    def begin_step(self) -> None:
        self._fwd_seq = itertools.count()
        for layer in self.layers:
            layer.step_calls = 0
            layer.grad_sq = 0.0
            layer.grad_seen = False
        self.extra_inputs = []
        self._bwd_counter = itertools.count()

    def end_step(self, extra: dict[str, torch.Tensor]) -> dict[str, list[float]]:
        """Flush the step's statistics in one transfer; returns the extra named values."""
        self.remove_tensor_hooks()
        if not self.diagnose:
            for layer in self.layers:
                if layer.alive is not None and not layer.all_alive:
                    self.rec.add(layer.slot, "dead", layer.alive.le(0).sum(dtype=torch.float32))
        for key, value in extra.items():
            if value.dim() == 0:
                self.rec.add(None, key, value.to(torch.float32))
            else:
                self.rec.add_vector(None, key, value)
        extras: dict[str, list[float]] = {}
        nonfinite_bwd: list[tuple[int, str]] = []
        nonfinite_fwd: list[tuple[int, str]] = []
        suspicious = False
        for slot, name, vals, seq in self.rec.flush():
            if slot is None:
                extras[name] = vals
                continue
            v = vals[0]
            if isinstance(slot, tuple):   # a watched op call site (diagnosis only: v is an exact 0/1 flag)
                entry = self.op_list[slot[1]]
                if v > 0:
                    if name == "op":
                        entry["forward_nonfinite"] += 1
                        nonfinite_fwd.append((seq, entry["label"]))
                    else:
                        entry["backward_nonfinite"] += 1
                        nonfinite_bwd.append((seq, entry["label"]))
                continue
            layer = self.layers[slot]
            if name == "out":     # diagnosis passes only: an exact 0/1 flag
                if v > 0:
                    layer.stats.nonfinite_outputs += 1
                    nonfinite_fwd.append((seq, layer.name))
            elif name == "g":
                if self.diagnose:             # an exact 0/1 flag
                    if v > 0:
                        layer.stats.nonfinite_output_grads += 1
                        nonfinite_bwd.append((seq, layer.name))
                else:                         # a sum of squares; non-finite = NaN/Inf or overflow
                    if not math.isfinite(v):
                        suspicious = True
                    layer.grad_sq += v   # sums of squares add up over calls
                    layer.grad_seen = True
            elif name == "sat":
                layer.sat_count += v
            elif name == "dead" and v == 0:
                layer.all_alive = True   # a unit that fired once can never be "dead in every pass" again
        self.step_nonfinite = suspicious
        if self.diagnose:   # the diagnosis pass names the origin, down to the op; it adds no statistics
            if nonfinite_fwd:
                self.first_nonfinite_forward = min(nonfinite_fwd)[1]
            if nonfinite_bwd:
                self.first_nonfinite_backward = min(nonfinite_bwd)[1]
            return extras
        for layer in self.layers:
            layer.calls_total += layer.step_calls
            if layer.grad_seen:
                layer.grad_norms.append(math.sqrt(layer.grad_sq))
        return extras

    def finish(self, steps: int) -> list[S.LayerStats]:
        """Bring back per-unit masks and time profiles (one transfer) and finalise LayerStats."""
        vectors: list[torch.Tensor] = []
        owners: list[tuple[_Layer, str, int]] = []
        for layer in self.layers:
            if layer.alive is not None:   # NaN (not <= 0) counts as alive
                vectors.append(layer.alive.le(0).logical_not_().to(torch.float32))
                owners.append((layer, "alive", layer.alive.numel()))
            if layer.time_sq is not None:
                vectors.append(layer.time_sq.to(torch.float32))
                owners.append((layer, "time", layer.time_sq.numel()))
        flat: list[float] = []
        if vectors:
            dev = vectors[0].device
            flat = torch.cat([v.to(dev) for v in vectors]).cpu().tolist()
        pos = 0
        for layer, what, n in owners:
            vals = flat[pos:pos + n]
            pos += n
            st = layer.stats
            if what == "alive":
                st.units = n
                st.dead_units = int(n - sum(vals))
            else:
                _set_time_profile(st, [math.sqrt(max(v, 0.0)) for v in vals])

        # Depth order: first forward call; modules never called are placed after the module registered
        # just before them (e.g. nn.MultiheadAttention.out_proj, whose weights are used by its parent).
        order: list[tuple[float, int]] = []
        last_key = -1.0
        for layer in self.layers:
            if layer.first_call is not None:
                last_key = float(layer.first_call)
                order.append((last_key, layer.slot))
            else:
                last_key += 1e-3
                order.append((last_key, layer.slot))
        order.sort()
        out = []
        for i, (_, slot) in enumerate(order):
            layer = self.layers[slot]
            st = layer.stats
            st.index = i
            st.calls = round(layer.calls_total / steps) if steps else 0
            st.output_grad_norm = _mean(layer.grad_norms)
            st.output_grad_norm_max = max(layer.grad_norms) if layer.grad_norms else None
            st.grad_norm = _mean(layer.pgrad_norms)
            st.grad_norm_max = max(layer.pgrad_norms) if layer.pgrad_norms else None
            if layer.sat_total:
                st.saturated_fraction = layer.sat_count / layer.sat_total
            out.append(st)
        return out


_TORCH_DIR = os.path.dirname(torch.__file__)
_SELF_DIR = os.path.dirname(os.path.abspath(__file__))


def _display_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def _user_site() -> tuple[str, int]:
    """File and line of the innermost caller outside torch and gradcheck."""
    frame = sys._getframe(2)
    while frame is not None:
        fname = frame.f_code.co_filename
        if not fname.startswith(_TORCH_DIR) and not fname.startswith(_SELF_DIR):
            return (fname, frame.f_lineno)
        frame = frame.f_back
    return ("?", 0)


def _mean(values: list[float]) -> float | None:
    if not values:
        return None
    return sum(values) / len(values)


def _set_time_profile(st: S.LayerStats, per_t: list[float]) -> None:
    n = len(per_t)
    st.time_steps = n
    if n == 0:
        return
    if n > _PROFILE_POINTS:   # down-sample to at most 64 points (RMS over equal chunks)
        edges = [round(i * n / _PROFILE_POINTS) for i in range(_PROFILE_POINTS + 1)]
        st.time_grad_profile = [
            math.sqrt(sum(v * v for v in per_t[a:b]) / max(b - a, 1)) for a, b in zip(edges, edges[1:])
        ]
    else:
        st.time_grad_profile = list(per_t)
    k = max(1, n // 10)
    early = sum(per_t[:k]) / k
    late = sum(per_t[-k:]) / k
    st.time_grad_first_last = early / late if late > 0 else (math.inf if early > 0 else None)
    hi, lo = max(per_t), min(per_t)
    st.time_grad_min_max = lo / hi if hi > 0 else None


class _FunctionalWatch(TorchFunctionMode):
    """Sees torch.sigmoid / torch.tanh / F.relu (and their Tensor-method forms) called inside forward."""

    def __init__(self, inst: Instrumentation) -> None:
        super().__init__()
        self.inst = inst

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        try:
            kind = _FUNCTIONAL.get(func)
        except TypeError:   # unhashable callable
            kind = None
        if isinstance(out, torch.Tensor):
            if kind is not None:
                self.inst.on_functional(kind, out)
            elif self.inst.diagnose:
                try:
                    op = _RISKY.get(func)
                except TypeError:
                    op = None
                if op is not None:
                    self.inst.on_risky(op, out, args, kwargs)
        return out


# ----------------------------------------------------------------------------------------------------------
# Model state: snapshot and restore
# ----------------------------------------------------------------------------------------------------------

@dataclass
class _ModelState:
    training: list[tuple[nn.Module, bool]]
    buffers: list[tuple[nn.Module, str, torch.Tensor | None, torch.Tensor | None]]
    device: torch.device | None


def _model_device(model: nn.Module) -> torch.device | None:
    """The model's one device, or None when it has no tensors or spans several devices (then gradcheck
    runs it where it is and never moves it)."""
    devices = {t.device for t in itertools.chain(model.parameters(), model.buffers())}
    return devices.pop() if len(devices) == 1 else None


def _snapshot(model: nn.Module) -> _ModelState:
    training = [(m, m.training) for m in model.modules()]
    buffers = []
    for m in model.modules():
        for name, buf in m._buffers.items():
            buffers.append((m, name, buf, None if buf is None else buf.detach().clone()))
    return _ModelState(training=training, buffers=buffers, device=_model_device(model))


def _restore(model: nn.Module, state: _ModelState) -> None:
    if state.device is not None and _model_device(model) != state.device:
        model.to(state.device)
    with torch.no_grad():
        for m, name, original, saved in state.buffers:
            m._buffers[name] = original
            if original is not None and saved is not None:
                original.copy_(saved.to(original.device))
    for m, flag in state.training:
        m.training = flag


@contextmanager
def instrument(model: nn.Module, device: torch.device | None = None) -> Iterator[Instrumentation]:
    """Hooks that never leak: the model comes back exactly as it was given."""
    state = _snapshot(model)
    devices = [device] if device is not None and device.type == "cuda" else []
    inst: Instrumentation | None = None
    with torch.random.fork_rng(devices=devices):
        try:
            if device is not None and state.device is not None and state.device != device:
                try:
                    model.to(device)
                except RuntimeError as exc:   # e.g. CUDA out of memory while copying the weights
                    raise InputError(f"cannot move the model to {device}: {exc_line(exc, 160)}",
                                     hint="use --device cpu, or a smaller model") from None
            model.train()
            inst = Instrumentation(model)
            inst.attach()
            yield inst
        finally:
            if inst is not None:
                inst.detach()
            _restore(model, state)


# ----------------------------------------------------------------------------------------------------------
# Running the passes
# ----------------------------------------------------------------------------------------------------------

@dataclass
class PassResult:
    stats: S.RunStats
    notes: list[str]
    loss_description: str


def run_passes(model: nn.Module, batches: Any, loss_fn: Any, *, steps: int, seed: int,
               device: torch.device) -> PassResult:
    """Run `steps` instrumented forward/backward passes; return statistics only (no tensors).

    Python's cyclic garbage collector is paused for the passes (and restored afterwards): the hooks
    create many small objects, and collections that rescan the whole model's objects made the cost per
    layer grow with depth (1.56x over plain passes at 1000 layers with it, 1.06x without).
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _run_passes(model, batches, loss_fn, steps=steps, seed=seed, device=device)
    finally:
        if gc_was_enabled:
            gc.enable()


def _run_passes(model: nn.Module, batches: Any, loss_fn: Any, *, steps: int, seed: int,
                device: torch.device) -> PassResult:
    from gradcheck_cli import losses

    notes: list[str] = []
    losses_seen: list[float] = []
    total_norms: list[float] = []
    input_nonfinite = 0
    loss_description = getattr(loss_fn, "description", "?")
    with instrument(model, device) as inst:
        if not inst.params:
            raise InputError("the model has no trainable parameters (every parameter has requires_grad=False)",
                             hint="unfreeze at least one layer; there is no gradient to check")
        ever_grad = [False] * len(inst.params)
        ever_nonzero = [False] * len(inst.params)
        nonfinite_param = [0] * len(inst.params)
        # gradcheck never writes to parameters; a forward that does (weight clipping, max-norm
        # constraints in place) is detected through the tensors' version counters and reported.
        versions = [p._version for p in inst.params]
        _weight_stats(inst)

        def one_pass(step: int, batch: Any, watch: bool) -> dict[str, list[float]]:
            """Forward, loss, gradients; returns the pass's statistics (one host transfer)."""
            nonlocal loss_description
            seed_all(seed * 1_000_003 + step)   # same dropout masks (and numpy/random draws) in a re-run
            inst.begin_step()
            extra: dict[str, torch.Tensor] = {}
            in_nf = [_nonfinite(t) for t in batch.tensors() if t.is_floating_point()]
            if in_nf:
                extra["input_nf"] = torch.stack(in_nf).sum()
            set_phase("forward")
            try:
                with (_FunctionalWatch(inst) if watch else nullcontext()):
                    output = model(*batch.args, **batch.kwargs)
            except (InputError, UserCodeError):
                raise
            except Exception as exc:   # the user's forward raised
                raise _user_error("forward", exc, inst, batch) from exc
            set_phase("loss")
            try:
                loss, loss_description, note = losses.compute(loss_fn, output, batch, step, seed)
            except (InputError, UserCodeError):
                raise
            except Exception as exc:
                raise _user_error("loss", exc, inst, batch) from exc
            if note and note not in notes:
                notes.append(note)
            set_phase("backward")
            try:
                grads = torch.autograd.grad(loss, list(inst.params) + list(inst.extra_inputs), allow_unused=True)
            except Exception as exc:
                raise _user_error("backward", exc, inst, batch) from exc
            present = [i for i, g in enumerate(grads[:len(inst.params)]) if g is not None]
            if present and inst.diagnose:   # exact: which parameters' gradients hold NaN/Inf
                extra["pgrad_bad"] = torch.stack([_has_nonfinite(grads[i]) for i in present])
            elif present:
                extra["pgrad"] = _sumsq_many([grads[i] for i in present])
            extra["loss"] = loss.detach().reshape(1).to(torch.float32)
            del grads, output, loss
            vals = inst.end_step(extra)
            vals["present"] = present
            return vals

        watch = True      # the function mode; dropped after step 1 when it found no functional activation
        diagnosed = False
        for step in range(steps):
            set_phase("batch")
            batch = batches.get(step, device)
            vals = one_pass(step, batch, watch)
            watch = any(layer is not None for layer in inst.functional.values())
            losses_seen.append(vals["loss"][0])
            input_nonfinite = max(input_nonfinite, int(vals.get("input_nf", [0.0])[0]))
            norms = {i: math.sqrt(v) if v >= 0 else v for i, v in zip(vals["present"], vals.get("pgrad", []))}
            total_sq = 0.0
            for i, n in norms.items():
                ever_grad[i] = True
                if n != 0.0:
                    ever_nonzero[i] = True
                total_sq += n * n
            total_norms.append(math.sqrt(total_sq))
            for layer in inst.layers:
                if layer.owned and any(i in norms for i in layer.owned):
                    layer.pgrad_norms.append(math.sqrt(sum(norms.get(i, 0.0) ** 2 for i in layer.owned)))
            bad = (not math.isfinite(total_sq) or not math.isfinite(vals["loss"][0]) or inst.step_nonfinite
                   or vals.get("input_nf", [0.0])[0] > 0)
            if bad and not diagnosed:
                # Re-run this step (same batch, same seed) checking every layer output in forward order
                # and the ops that create NaN/Inf, to name where they start. Healthy runs never pay this.
                diagnosed = True
                inst.diagnose = True
                try:
                    diag = one_pass(step, batch, True)
                finally:
                    inst.diagnose = False
                for i, flag in zip(diag["present"], diag.get("pgrad_bad", [])):
                    if flag > 0:
                        nonfinite_param[i] = 1
        for layer in inst.layers:
            layer.stats.nonfinite_param_grads = sum(1 for i in layer.owned if nonfinite_param[i])
        layers = inst.finish(steps)
        run = S.RunStats(
            layers=layers,
            steps=steps,
            losses=losses_seen,
            parameters=inst.all_param_count,
            trainable_parameters=sum(p.numel() for p in inst.params),
            total_grad_norm=_mean(total_norms),
            total_grad_norm_max=max(total_norms) if total_norms else None,
            input_nonfinite=input_nonfinite,
            first_nonfinite_forward=inst.first_nonfinite_forward,
            first_nonfinite_backward=inst.first_nonfinite_backward,
            unused_parameters=[n for n, g in zip(inst.param_names, ever_grad) if not g],
            zero_grad_parameters=[n for n, g, nz in zip(inst.param_names, ever_grad, ever_nonzero) if g and not nz],
            nonfinite_ops=[{k: v for k, v in e.items() if k != "index"} for e in inst.op_list
                           if e["forward_nonfinite"] or e["backward_nonfinite"]],
        )
        notes.extend(inst.notes)
        changed = [n for n, p, v in zip(inst.param_names, inst.params, versions) if p._version != v]
        if changed:
            notes.append(f"the model's own code modified {len(changed)} parameters in place during forward "
                         f"({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''}); gradcheck does not "
                         "undo changes made by the model's code to its parameters")
    return PassResult(stats=run, notes=notes, loss_description=loss_description)


def _weight_stats(inst: Instrumentation) -> None:
    """Weight norms, `.weight` std and fan-in, `.bias` means and nn.RNN's largest singular value of
    weight_hh_l0: reduced on the device (parameter norms in one _foreach_norm), one transfer back."""
    index_of = {id(p): i for i, p in enumerate(inst.params)}
    scalars: list[torch.Tensor] = []                    # 0-d float32 tensors, stacked once
    wanted: list[tuple[S.LayerStats, str, float]] = []  # (stats, field, divisor applied on the host)
    rms_from_norm: list[tuple[S.LayerStats, int, int]] = []
    with torch.no_grad():
        norms = [v.sqrt() for v in _sumsq_many([p.detach() for p in inst.params])]
        for layer in inst.layers:
            mod = layer.module
            if mod is None or layer.stats.role != S.PARAM:
                continue
            w = getattr(mod, "weight", None)
            if isinstance(w, torch.Tensor) and w.dim() >= 2 and w.is_floating_point() and w.numel():
                fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(w)
                layer.stats.fan_in, layer.stats.fan_out = int(fan_in), int(fan_out)
                i = index_of.get(id(w))
                if i is not None:   # the std (RMS) follows from the norm already being computed
                    rms_from_norm.append((layer.stats, i, w.numel()))
                else:               # a frozen weight
                    scalars.append(_sumsq(w.detach()).sqrt())
                    wanted.append((layer.stats, "weight_rms", math.sqrt(w.numel())))
            b = getattr(mod, "bias", None)
            if isinstance(b, torch.Tensor) and b.numel() and b.is_floating_point():
                scalars.append(b.detach().mean(dtype=torch.float32))
                wanted.append((layer.stats, "bias_mean", 1.0))
            if isinstance(mod, nn.RNN):
                whh = getattr(mod, "weight_hh_l0", None)
                if isinstance(whh, torch.Tensor):
                    scalars.append(torch.linalg.matrix_norm(whh.detach().float(), ord=2))
                    wanted.append((layer.stats, "recurrent_sigma_max", 1.0))
        dev = norms[0].device if norms else torch.device("cpu")
        flat = torch.stack([t if t.device == dev else t.to(dev) for t in (*norms, *scalars)]).cpu().tolist()
    n = len(inst.params)
    wnorms, rest = flat[:n], flat[n:]
    for layer in inst.layers:
        if layer.owned:
            layer.stats.weight_norm = math.sqrt(sum(wnorms[i] ** 2 for i in layer.owned))
    for st, i, numel in rms_from_norm:
        st.weight_rms = wnorms[i] / math.sqrt(numel)
    for (st, key, divisor), v in zip(wanted, rest):
        setattr(st, key, v / divisor)


def _user_error(phase: str, exc: BaseException, inst: Instrumentation, batch: Any) -> UserCodeError:
    where = inst.module_at(exc)
    msg = exc_line(exc)
    hint = None
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None), MemoryError) if t is not None)
    if isinstance(exc, RunTimeout):
        msg = str(exc)
        hint = (f"the {phase} pass is still running after {exc.seconds:g} s: look for a loop that never ends "
                "in that code, or raise --timeout")
    elif isinstance(exc, oom_types) or "out of memory" in str(exc).lower():
        msg = f"out of memory ({type(exc).__name__})"
        hint = "use a smaller batch (--input-shape with a smaller first dimension, or a smaller --batch)"
    elif phase == "forward" and isinstance(exc, RuntimeError) and ("shape" in str(exc) or "size" in str(exc)):
        hint = f"the batch has {batch.describe_shapes()}; check --input-shape / --batch against the model"
    return UserCodeError(msg, phase=phase, where=where, hint=hint, original=exc)
