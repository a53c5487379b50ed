"""Per-layer statistics for a whole run: plain Python data, no tensors (so rules never touch torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Activation families, as recorded in LayerStats.activation.
SIGMOID = "sigmoid"
TANH = "tanh"
RELU = "relu"            # ReLU-family units that output exactly 0 for negative inputs (can die)
OTHER_ACT = "other"      # smooth or leaky activations (GELU, SiLU, LeakyReLU, ...)

# Roles.
PARAM = "param"              # a module owning parameters
ACTIVATION = "activation"    # a parameter-free activation module
FUNCTIONAL = "functional"    # torch.sigmoid / torch.tanh / F.relu called inside some module's forward
MODEL = "model"              # the model itself (its output), when it owns no parameters directly


# A ReLU unit is far below zero (dead on any input) when its largest pre-activation is below -DEAD_MARGIN
# times its layer's scale (see measure/accumulate.py, where LayerStats.dead_units is counted).
DEAD_MARGIN = 3.0
# ... or when it is off on varied inputs: its layer's coherence (LayerStats.coherence) is below this.
VARIED_COHERENCE = 0.25


@dataclass
class LayerStats:
    index: int                          # forward order of first call (depth order)
    name: str                           # qualified module name; "" is the model itself
    type: str                           # class name, e.g. "Linear", or "sigmoid()" for functional calls
    role: str                           # PARAM | ACTIVATION | FUNCTIONAL
    activation: str | None = None       # SIGMOID | TANH | RELU | OTHER_ACT | None
    recurrent: str | None = None        # "RNN" | "LSTM" | "GRU" | None
    params: int = 0                     # number of parameter elements owned directly
    trainable_params: int = 0
    calls: int = 0                      # forward calls per step (averaged)
    weight_norm: float | None = None    # L2 norm of the module's own trainable parameters
    weight_rms: float | None = None     # RMS of its `.weight` (compare with the init's std)
    fan_in: int | None = None           # of `.weight` (Linear/Conv: in_features * kernel size)
    fan_out: int | None = None
    bias_mean: float | None = None      # mean of its `.bias`
    norm_weight_rms: float | None = None  # normalisation layers: RMS of the scale (gamma), 1 at a standard init
    norm_eps: float | None = None       # normalisation layers: eps
    recurrent_sigma_max: float | None = None   # nn.RNN: largest singular value of weight_hh_l0
    grad_norm: float | None = None      # L2 norm of their gradient, mean over steps
    grad_norm_max: float | None = None
    output_grad_norm: float | None = None      # L2 norm of dLoss/dOutput (the error signal), mean over steps
    output_grad_norm_max: float | None = None
    saturated_fraction: float | None = None    # sigmoid/tanh: share of outputs whose derivative < 1% of max
    units: int | None = None            # ReLU-family: units (features, or channels for convolutions)
    off_units: int | None = None        # ... that output 0 for every example of every pass (pre-activation <= 0)
    dead_units: int | None = None       # ... of those, the dead ones: far below 0 or off on varied inputs
    unit_margin_min: float | None = None       # lowest per-unit max pre-activation, in layer std (margin)
    off_margin_median: float | None = None     # median margin of the off units (how far below 0 they stay)
    coherence: float | None = None      # share of the pre-activation's variance between units: 1 = every
    #                                     example (and position) gives the same vector (collapse), ~0 = varied
    unit_samples: int | None = None     # pre-activation values seen per unit (examples x positions x calls)
    nonfinite_outputs: int = 0          # forward calls whose output held NaN/Inf (in the diagnosis pass)
    nonfinite_output_grads: int = 0     # backward calls whose dLoss/dOutput held NaN/Inf
    nonfinite_param_grads: int = 0      # parameters of this module whose gradient had a NaN/Inf
    time_steps: int | None = None       # recurrent: sequence length seen
    bidirectional: bool | None = None
    time_grad_profile: list[float] | None = None  # recurrent: |dLoss/dInput_t| per time step (<= 64 points)
    time_grad_first_last: float | None = None     # recurrent: mean of earliest 10% / latest 10% steps
    time_grad_min_max: float | None = None        # recurrent: smallest / largest per-step norm

    @property
    def dead_fraction(self) -> float | None:
        if self.units in (None, 0) or self.dead_units is None:
            return None
        return self.dead_units / self.units

    @property
    def off_fraction(self) -> float | None:
        """Share of units that output 0 for every example (dead or merely off on these inputs)."""
        if self.units in (None, 0):
            return None
        off = self.off_units if self.off_units is not None else self.dead_units
        return None if off is None else off / self.units

    def to_dict(self) -> dict[str, Any]:
        d = _fields_dict(self)
        d["dead_fraction"] = self.dead_fraction
        d["off_fraction"] = self.off_fraction
        return d


@dataclass
class StepSeries:
    """Per-step values of a run, in step order: what a training rehearsal plots. Not part of the report
    (RunStats.to_dict leaves it out unless asked), so the check's reports do not change with it."""
    losses: list[float] = field(default_factory=list)
    total_grad_norms: list[float] = field(default_factory=list)          # global parameter-gradient norm
    layer_grad_norms: dict[str, list[float]] = field(default_factory=dict)         # per layer, parameters
    layer_output_grad_norms: dict[str, list[float]] = field(default_factory=dict)  # per layer, dLoss/dOutput


@dataclass
class RunStats:
    layers: list[LayerStats]
    steps: int
    losses: list[float]
    parameters: int = 0
    trainable_parameters: int = 0
    total_grad_norm: float | None = None        # global gradient norm, mean over steps
    total_grad_norm_max: float | None = None
    input_nonfinite: int = 0                    # NaN/Inf values in the inputs themselves (largest batch)
    first_nonfinite_forward: str | None = None  # first layer (forward order) with a NaN/Inf output
    first_nonfinite_backward: str | None = None  # first layer (backward order) with a NaN/Inf output gradient
    unused_parameters: list[str] = field(default_factory=list)     # trainable, never received a gradient
    zero_grad_parameters: list[str] = field(default_factory=list)  # gradient exactly 0 in every step
    # Watched operations (log, exp, sqrt, div, pow, ...) whose output or output gradient had NaN/Inf:
    # {op, file, line, module, label, forward_nonfinite, backward_nonfinite}: counts of calls with NaN/Inf
    nonfinite_ops: list[dict[str, Any]] = field(default_factory=list)
    series: StepSeries | None = None            # per-step values (not in the report)
    training: "Trajectory | None" = None        # the training rehearsal (--train-steps), when run
    param_dtype: str | None = None      # the trainable parameters' dtype ("float32", "float16", ...)
    # The loss (filled in by the pipeline from what losses.compute used):
    loss_kind: str | None = None        # cross-entropy | bce-with-logits | mse | model | callable | several
    loss_classes: int | None = None     # cross-entropy: C (V for a language model); 2 for bce-with-logits
    loss_outputs: list[str] | None = None          # the model outputs the loss was computed on
    loss_ignored_outputs: list[str] | None = None  # float outputs the default loss could not use

    def origin(self, label: str | None) -> tuple[str | None, Any]:
        """Resolve first_nonfinite_* to ("layer", LayerStats) or ("op", dict) or (None, None)."""
        if label is None:
            return None, None
        layer = self.layer(label)
        if layer is not None:
            return "layer", layer
        for op in self.nonfinite_ops:
            if op.get("label") == label:
                return "op", op
        return None, None

    def layer(self, name: str) -> LayerStats | None:
        for layer in self.layers:
            if layer.name == name:
                return layer
        return None

    def to_dict(self, series: bool = False, layers: bool = True) -> dict[str, Any]:
        """Plain data (JSON-ready). layers=False leaves the per-layer list out (the report keeps it apart)."""
        d = {"layers": [layer.to_dict() for layer in self.layers]} if layers else {}
        d.update(_fields_dict(self, skip=("layers", "series", "training")))   # training: in its own section
        if series:
            d["series"] = asdict(self.series) if self.series is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunStats":
        d = dict(d)
        layers = []
        for ld in d.pop("layers", []):
            ld = {k: v for k, v in ld.items() if k not in ("dead_fraction", "off_fraction")}
            layers.append(LayerStats(**ld))
        series = d.pop("series", None)
        training = d.pop("training", None)
        return cls(layers=layers, series=StepSeries(**series) if series else None,
                   training=Trajectory(**training) if training else None, **d)


@dataclass
class Trajectory:
    """A training rehearsal (--train-steps): per-step series of a short real training run on a copy of
    the model, plain data. Step t is the t-th optimizer step, taken with the weights after t updates
    (step 0 uses the initial weights, as the check does). Rules read it as RunStats.training."""
    steps_requested: int
    optimizer: str                      # e.g. "adam (lr 0.001)" or "examples/x.py:make_opt"
    lr: float | None                    # the first parameter group's learning rate at step 0
    precision: str = "fp32"             # fp32 | bf16 | fp16
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)        # global gradient norm (unscaled) per step
    layer_grad_norms: dict[str, list[float]] = field(default_factory=dict)
    # |update| / |weight| per layer per step (None: the layer's weights were exactly zero before the step)
    update_ratios: dict[str, list[float | None]] = field(default_factory=dict)
    layer_params: dict[str, list[str]] = field(default_factory=dict)   # layer -> its trainable parameters
    params_not_in_optimizer: list[str] = field(default_factory=list)
    # ReLU-family modules: per unit, whether it fired (output > 0 for some example) at step 0, and the
    # last step at which it fired (-1: never)
    relu_alive_at_start: dict[str, list[bool]] = field(default_factory=dict)
    relu_last_alive: dict[str, list[int]] = field(default_factory=dict)
    # NaN/Inf: the step of onset, what went first ("loss", "gradient" or "weight"), and where (diagnosis)
    nonfinite_step: int | None = None
    nonfinite_first: str | None = None
    nonfinite_forward: str | None = None
    nonfinite_backward: str | None = None
    nonfinite_ops: list[dict[str, Any]] = field(default_factory=list)
    nonfinite_layers: list[str] = field(default_factory=list)    # layers with NaN/Inf parameter gradients or weights
    nonfinite_rank: dict[str, int] | None = None   # under torchrun: the rank that saw the first NaN/Inf (forward/backward)
    # mixed precision: loss scale per step (fp16), steps skipped for overflow, gradients flushed to zero
    loss_scales: list[float] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)
    flushed_to_zero: dict[str, float] = field(default_factory=dict)   # layer -> share of its gradient entries
    stopped: str | None = None          # why the run ended before steps_requested, if it did

    @property
    def steps(self) -> int:
        return len(self.losses)

    def worst_update_ratios(self) -> list[tuple[float | None, str | None]]:
        """Per step: the largest |update|/|weight| over layers, and that layer."""
        out: list[tuple[float | None, str | None]] = []
        for t in range(self.steps):
            best: tuple[float | None, str | None] = (None, None)
            for layer, rs in self.update_ratios.items():
                v = rs[t] if t < len(rs) else None
                if v is not None and (best[0] is None or v > best[0] or v != v):
                    best = (v, layer)
            out.append(best)
        return out


def _fields_dict(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A dataclass's fields as a dict, lists and dicts copied one level deep (what dataclasses.asdict gives for
    these plain-data classes, whose values are numbers, strings, lists of numbers and flat dicts), without
    asdict's recursive deepcopy of every value: it cost ~0.15 s per report for a 200-layer model."""
    d: dict[str, Any] = {}
    for f in fields(obj):
        if f.name in skip:
            continue
        v = getattr(obj, f.name)
        if type(v) is list:
            v = [dict(x) if type(x) is dict else x for x in v]
        elif type(v) is dict:
            v = {k: list(x) if type(x) is list else x for k, x in v.items()}
        d[f.name] = v
    return d
