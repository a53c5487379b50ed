"""Hook factories: forward hooks on layers, gradient hooks on their outputs, per-time-step hooks on the
inputs of recurrent layers. Each computes a small statistic on the tensor's device and emits it into
the sink (a record.Recorder); nothing keeps an activation or a gradient.

`Hooks.install` registers the module hooks (removed by `remove`); tensor and grad_fn hooks of a pass
are kept in `tensor_handles` and removed at the end of every step (`end_pass`), so none outlives its
pass even when the caller keeps the graph (or an exception holding it) alive.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Any, Callable

import torch
import torch.nn as nn

from gradcheck_cli import stats as S
from gradcheck_cli.losses import primary_tensor
from gradcheck_cli.measure import kernels as K
from gradcheck_cli.measure.inventory import CHANNEL_FIRST_TYPES, Inventory, Layer
from gradcheck_cli.measure.record import Recorder
from torch.utils.hooks import RemovableHandle


# Values per unit after which a ReLU layer's pre-activation moments stop being accumulated (the per-unit mean
# and variance are then known to a few percent; see track_alive).
MOMENT_VALUES = 512


def add_tensor_hook(t: torch.Tensor, hook: Callable, handles: list) -> None:
    """Tensor.register_hook without its Python wrapper's cost (a handle object and a torch-function
    check per call; several microseconds, once per layer output and pass): for plain tensors the
    same steps, with ids from the same counter, and (hooks dict, id) kept to remove it."""
    if type(t) is not torch.Tensor:   # subclasses may override register_hook
        handles.append(t.register_hook(hook))
        return
    hooks = t._backward_hooks
    if hooks is None:
        hooks = t._backward_hooks = OrderedDict()
        if t.grad_fn is not None:
            t.grad_fn._register_hook_dict(t)
    key = RemovableHandle.next_id
    RemovableHandle.next_id += 1
    hooks[key] = hook
    handles.append((hooks, key))


class Hooks:
    def __init__(self, inventory: Inventory, sink: Recorder) -> None:
        self.inv = inventory
        self.sink = sink
        self.handles: list[Any] = []          # module hooks: removed by remove()
        self.tensor_handles: list[Any] = []   # tensor and grad_fn hooks of the current pass
        self.diagnose = False   # a diagnosis pass: exact NaN/Inf flags in forward/backward order
        self.record_inputs = True   # recurrent layers: ask for the input's gradient (off in a user's loop)
        self.output_grads = True    # |dLoss/dOutput| per layer (the training rehearsal turns it off, see training.py)
        self.extra_inputs: list[torch.Tensor] = []   # inputs made to require grad (for autograd.grad)
        self.last_param_type: type | None = None
        self.notes: list[str] = []
        self.call_counter = itertools.count()   # first-call order over the run (depth order)
        self.fwd_seq = itertools.count()        # event order within a pass
        self.bwd_seq = itertools.count()
        self.step_index = 0                     # normal steps closed so far

    # -- lifecycle -------------------------------------------------------------------------------------------

    def install(self) -> None:
        for layer in list(self.inv.layers):
            mod = layer.module
            self.handles.append(mod.register_forward_hook(self.forward_hook(layer)))
            if layer.stats.recurrent:
                self.handles.append(mod.register_forward_pre_hook(self.rnn_pre_hook(layer)))
            if layer.kind == S.RELU and getattr(mod, "inplace", False) is True:
                # nn.ReLU(inplace=True) overwrites its input: its pre-activation is read before it runs
                layer.pre_hooked = True
                self.handles.append(mod.register_forward_pre_hook(self.relu_pre_hook(layer)))

    def remove(self) -> None:
        self.end_pass()
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for layer in self.inv.layers:
            layer.pre_hooked = False

    def begin_pass(self) -> None:
        self.fwd_seq = itertools.count()
        self.bwd_seq = itertools.count()
        self.extra_inputs = []
        for layer in self.inv.layers:
            layer.step_calls = 0
            layer.step_sat_n = 0

    def emit_step_end(self) -> None:
        """The step's host counters and the ReLU layers' dead-unit counts so far, into the sink."""
        if self.diagnose:
            return
        sink = self.sink
        layers = self.inv.layers
        sink.add_host_vector(None, "calls", [layer.step_calls for layer in layers])
        sink.add_host_vector(None, "sat_n", [layer.step_sat_n for layer in layers])
        # Whether every unit of a ReLU layer has fired (then it needs no more tracking): asked after
        # steps 1, 2, 4, 8, ... only (two kernels per layer); the dead units themselves come from the
        # per-unit maxima at the end of the run, so asking less often loses nothing.
        n = self.step_index + 1
        if n & (n - 1) == 0:
            for layer in layers:
                if layer.alive is not None and not layer.all_alive:
                    sink.add(layer.slot, "dead", layer.alive.le(0).sum(dtype=torch.float32))
        self.step_index = n

    def end_pass(self) -> None:
        for h in self.tensor_handles:
            if type(h) is tuple:
                h[0].pop(h[1], None)
            else:
                h.remove()
        self.tensor_handles.clear()

    # -- forward ----------------------------------------------------------------------------------------------

    def forward_hook(self, layer: Layer) -> Callable:
        is_param = layer.stats.role == S.PARAM
        is_relu = layer.kind == S.RELU
        on_output = self.on_output

        def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
            if is_param:
                self.last_param_type = type(mod)
            out = output if type(output) is torch.Tensor else primary_tensor(output)
            if out is not None:
                if is_relu:   # the ReLU's input is its pre-activation (in-place ones: see relu_pre_hook)
                    on_output(layer, out, inputs[0] if inputs and type(inputs[0]) is torch.Tensor else None)
                else:
                    on_output(layer, out)
        return hook

    def relu_pre_hook(self, layer: Layer) -> Callable:
        def pre_hook(mod: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            if type(x) is torch.Tensor:
                self.track_pre(layer, x)
        return pre_hook

    def track_pre(self, layer: Layer, x: torch.Tensor) -> None:
        """Per-unit statistics of a ReLU's input read before an in-place ReLU overwrites it (the forward
        hook that follows then leaves them alone)."""
        if (self.diagnose or layer.alive_bad or layer.all_alive or not x.is_floating_point() or x.dim() < 1
                or _in_backward()):
            return
        d = x.detach()
        self.track_alive(layer, d, d)

    def on_output(self, layer: Layer, out: torch.Tensor, pre: torch.Tensor | None = None) -> None:
        if _in_backward():
            # Gradient checkpointing recomputes the forward inside backward: the call was already counted
            # and measured. Its output's gradient (reentrant checkpointing) is still the layer's.
            if out.requires_grad and not self.diagnose:
                if layer.grad_hook is None:
                    layer.grad_hook = self.grad_hook(layer)
                self.tensor_handles.append(out.register_hook(layer.grad_hook))
            return
        if layer.first_call is None:
            layer.first_call = next(self.call_counter)
        if self.diagnose:
            # Diagnosis pass: every output is checked, in forward order, to find where NaN/Inf start.
            if out.is_floating_point() or out.is_complex():
                self.sink.add(layer.slot, "out", K.has_nonfinite(out.detach()), next(self.fwd_seq))
        else:
            layer.step_calls += 1
            if not out.is_floating_point():
                return
            kind = layer.kind
            if kind == S.SIGMOID:
                self.sink.add(layer.slot, "sat", K.sigmoid_saturated(out.detach()))
                layer.step_sat_n += out.numel()
            elif kind == S.TANH:
                self.sink.add(layer.slot, "sat", K.tanh_saturated(out.detach()))
                layer.step_sat_n += out.numel()
            elif (kind == S.RELU and out.dim() >= 1 and not layer.alive_bad and not layer.all_alive
                  and not layer.pre_hooked):
                d = out.detach()
                if pre is not None and (pre is out or pre.shape != out.shape or not pre.is_floating_point()):
                    pre = None   # an in-place call (the input was overwritten) or not the pre-activation
                self.track_alive(layer, d, pre.detach() if pre is not None else None)
        if out.requires_grad and (self.output_grads or self.diagnose):
            if layer.grad_hook is None:
                layer.grad_hook = self.grad_hook(layer)
            add_tensor_hook(out, layer.grad_hook, self.tensor_handles)

    def track_alive(self, layer: Layer, d: torch.Tensor, pre: torch.Tensor | None = None) -> None:
        """Running per-unit maximum (units: features, or channels for convolutions) of the pre-activation
        `pre` (of the output `d` when the pre-activation cannot be seen): a unit is off when its maximum is
        still <= 0 at the end of the run. With the pre-activation also its per-unit sums and sums of
        squares and the count of values (how far below zero the off units are, and how alike the
        examples' vectors are): one more reduction over the data on the device, no host sync."""
        ndim = d.dim()
        if layer.alive_dims is None or layer.alive_ndim != ndim:
            channel_first = ndim >= 4 or (ndim == 3 and self.last_param_type is not None
                                          and issubclass(self.last_param_type, CHANNEL_FIRST_TYPES))
            unit_dim = 1 if channel_first and ndim >= 2 else ndim - 1
            layer.alive_dims = tuple(i for i in range(ndim) if i != unit_dim)
            layer.alive_ndim = ndim
        dims = layer.alive_dims
        src = d if pre is None else pre
        peak = torch.amax(src, dims) if dims else src.clone()
        if layer.alive is None:
            layer.alive = peak
        elif layer.alive.shape == peak.shape:
            torch.maximum(layer.alive, peak, out=layer.alive)
        else:   # the layer's width changed between calls: the per-unit view is meaningless
            layer.alive_bad = True
            layer.alive = None
            layer.pre_moments = None
            self.notes.append(f"`{layer.name}` is called on outputs of different widths (one module shared by "
                              "several layers): its dead units are not measured; use one activation module "
                              "per layer to get them")
            return
        if pre is None:
            layer.pre_blind = True
            layer.pre_moments = None
        elif not layer.pre_blind and (layer.pre_moments is None
                                      or layer.pre_moments[1] < MOMENT_VALUES * layer.alive.numel()):
            # The moments (a unit's mean and spread, the layer's coherence) are estimates: MOMENT_VALUES values
            # per unit are plenty, so a layer whose units never all fire stops paying for them after that
            # (its per-unit maxima, which decide off units, are still taken on every call).
            if layer.pre_moments is None:
                layer.pre_moments = [K.unit_moments(None, pre, dims), pre.numel()]
            else:
                K.unit_moments(layer.pre_moments[0], pre, dims)
                layer.pre_moments[1] += pre.numel()

    # -- backward ---------------------------------------------------------------------------------------------

    def grad_hook(self, layer: Layer) -> Callable:
        slot = layer.slot
        sink = self.sink

        def hook(g: torch.Tensor) -> None:
            if self.diagnose:
                sink.add(slot, "g", K.has_nonfinite(g), next(self.bwd_seq))
            else:
                sink.add(slot, "g", K.sumsq(g), next(self.bwd_seq))
        return hook

    def rnn_pre_hook(self, layer: Layer) -> Callable:
        def pre_hook(mod: nn.Module, args: tuple) -> tuple | None:
            if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
                return None   # PackedSequence or unusual input: no per-time-step profile
            if self.diagnose:
                return None
            x = args[0]
            batch_first = bool(getattr(mod, "batch_first", False))
            time_dim = 1 if (batch_first and x.dim() == 3) else 0
            if not x.requires_grad:
                if not self.record_inputs or not torch.is_grad_enabled():
                    return None
                # The raw input needs no gradient for training; ask for one so we see it per time step.
                x = x.detach().requires_grad_(True)
                self.extra_inputs.append(x)
            else:
                # A fresh view: its gradient is what flows back through this layer only, not the input's
                # total gradient (which a skip connection around the RNN would add to).
                x = x.view_as(x)
            add_tensor_hook(x, self.time_hook(layer, time_dim), self.tensor_handles)
            return (x,) + tuple(args[1:])
        return pre_hook

    def time_hook(self, layer: Layer, time_dim: int) -> Callable:
        def hook(g: torch.Tensor) -> None:
            g = g.detach()
            dims = [d for d in range(g.dim()) if d != time_dim]
            per_t = g.float().pow(2).sum(dim=dims) if dims else g.float().pow(2)
            if layer.time_sq is None:
                layer.time_sq = per_t
            elif layer.time_sq.shape == per_t.shape:
                layer.time_sq = layer.time_sq + per_t
        return hook


def _in_backward() -> bool:
    """True while autograd executes a backward node (e.g. checkpointing's recomputation of forward)."""
    current = getattr(torch._C, "_current_autograd_node", None)
    return current is not None and current() is not None
