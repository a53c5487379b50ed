"""Which modules and parameters are measured, their kinds and owners.

A layer is a module that owns parameters directly, a parameter-free activation module, or the model
itself; functional activations (torch.sigmoid called inside a forward) are added as they are found.
Parameters are the unique trainable ones; a parameter shared by several modules (tied weights) is
attributed to its first owner in registration order, and the other owners are listed in `shared`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from gradcheck_cli import stats as S
from gradcheck_cli.errors import InputError

_RELU_TYPES = (nn.ReLU, nn.ReLU6)
_OTHER_ACT_TYPES = (
    nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.GLU,
    nn.Softmax, nn.LogSoftmax,
)
_ACT_NAME_HINTS = ("Activation", "GELU", "SiLU", "Swish", "Mish", "QuickGELU")
RECURRENT_TYPES = (nn.RNN, nn.LSTM, nn.GRU)
CHANNEL_FIRST_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                       nn.ConvTranspose3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                       nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm)


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


@dataclass
class Layer:
    """One measured layer: what it is, and the device-side state its hooks keep over the run."""

    slot: int
    name: str
    module: nn.Module | None
    stats: S.LayerStats
    kind: str | None
    owned: list[int] = field(default_factory=list)      # indexes into Inventory.params
    first_call: int | None = None
    # ReLU-family: running per-unit maximum of the pre-activation (the output where the input cannot be
    # seen) (device tensor), and its unit layout
    all_alive: bool = False   # every unit has been non-zero at least once: nothing left to track
    alive_dims: tuple[int, ...] | None = None
    alive_ndim: int = -1
    alive: torch.Tensor | None = None
    alive_bad: bool = False
    # ... and the pre-activation's moments for the margins and the coherence: [(2, units) float64 tensor
    # of per-unit sums and sums of squares on the device, count of values (host int)]; None once a call's
    # pre-activation could not be seen (pre_blind: then only "off" is known, not how far below zero)
    pre_moments: list[Any] | None = None
    pre_blind: bool = False
    pre_hooked: bool = False   # an in-place nn.ReLU: its pre-activation is measured in a forward pre-hook
    # recurrent: sum over the run of the squared gradient reaching the input, per time step (device)
    time_sq: torch.Tensor | None = None
    # host counters of the current step (emitted into the record at its end)
    step_calls: int = 0
    step_sat_n: int = 0
    grad_hook: Any = None


class Inventory:
    """The layers and trainable parameters of one model."""

    def __init__(self, model: nn.Module) -> None:
        lazy = [n for n, p in model.named_parameters() if isinstance(p, nn.parameter.UninitializedParameter)]
        if lazy:
            raise InputError(f"the model has uninitialised (lazy) parameters: {', '.join(lazy[:3])}",
                             hint="run one forward pass on a real batch after building it, before gradcheck")
        self.model = model
        self.layers: list[Layer] = []
        self.by_module: dict[int, Layer] = {}
        self.module_names: dict[int, str] = {}
        self.activation_modules: set[int] = set()
        self.param_names: list[str] = []
        self.params: list[nn.Parameter] = []
        self.shared: dict[str, list[str]] = {}    # parameter name -> every other module that holds it
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
            own = []
            for p in direct:
                first = owner_of.get(id(p))
                if first == name:
                    own.append(p)
                elif id(p) in index_of:   # a tied weight held here too: attributed to `first`, said so
                    pname = self.param_names[index_of[id(p)]]
                    self.shared.setdefault(pname, []).append(name)
            role = S.PARAM if direct else (S.ACTIVATION if kind is not None else S.MODEL)
            rec_type = type(mod).__name__ if isinstance(mod, RECURRENT_TYPES) else None
            st = S.LayerStats(
                index=-1, name=name, type=type(mod).__name__, role=role, activation=kind, recurrent=rec_type,
                params=sum(p.numel() for p in own),
                trainable_params=sum(p.numel() for p in own if p.requires_grad),
                bidirectional=bool(getattr(mod, "bidirectional", False)) if rec_type else None,
            )
            layer = Layer(slot=len(self.layers), name=name, module=mod, stats=st, kind=kind,
                          owned=[index_of[id(p)] for p in own if id(p) in index_of])
            self.layers.append(layer)
            self.by_module[id(mod)] = layer

    def add_functional(self, label: str, type_name: str, kind: str) -> Layer:
        st = S.LayerStats(index=-1, name=label, type=type_name, role=S.FUNCTIONAL, activation=kind)
        layer = Layer(slot=len(self.layers), name=label, module=None, stats=st, kind=kind)
        self.layers.append(layer)
        return layer

    def owner_name(self, module: nn.Module | None) -> str:
        return self.module_names.get(id(module), "") if module is not None else ""
