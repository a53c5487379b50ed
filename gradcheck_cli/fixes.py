"""Suggested fixes as data: the text a rule writes, plus (where gradcheck can make the change itself) a
torch-free *action*, so `--verify-fixes` can apply it to a copy of the model and re-run the check.

A `Fix` is a `str` (every renderer, the JSON and the baselines keep reading fixes as strings) carrying:
- `steps`: the change, as plain data (dicts with a "kind" and its parameters, derived by the rule from
  statistics). Several steps in one fix are applied together ("replace the sigmoids with ReLU *and*
  initialise with kaiming_normal_"); separate fixes are never combined.
- `reason`: why gradcheck cannot make the change (a code change: residual connections, an LSTM, input
  normalisation), reported as `"change": null` with this reason.

Step kinds (module and parameter names are the model's qualified names; `gradcheck_cli/verify_apply.py`
applies them with torch):
  swap-activation   modules -> to ("relu" | "leaky-relu" | "sigmoid"), negative_slope
  remove-module     modules replaced by nn.Identity (a ReLU after the output layer)
  init              modules: weights re-initialised with scheme ("kaiming-normal" | "xavier-normal" |
                    "normal"), nonlinearity, gain, std; zero_bias: biases set to 0
  orthogonal        params (recurrent weight_hh_*) re-initialised with torch.nn.init.orthogonal_(gain)
  bias              modules: bias filled with value (negative biases reset to 0)
  forget-bias       LSTM modules: the forget-gate slice of every bias_ih/bias_hh set so their sum is value
  norm-scale        normalisation modules: weight (gamma) filled with value
  norm-eps          normalisation modules: eps raised to value
  scale-weight      modules: weight (and bias) multiplied by factor (an output layer scaled down)
Training kinds (need --train-steps: they change the rehearsal, not the model):
  lr-probe          learning rate times each factor in turn until the finding is gone (largest stable)
  lr-scale          learning rate times factor (a far-too-small one raised)
  clip-grad-norm    clip_grad_norm_(params, max_norm) before every optimizer step
  add-to-optimizer  params (names) added to the optimizer as a new parameter group
"""

from __future__ import annotations

import math
from typing import Any

from gradcheck_cli.numbers import fmt

TRAINING_KINDS = ("lr-probe", "lr-scale", "clip-grad-norm", "add-to-optimizer")
MODEL_KINDS = ("swap-activation", "remove-module", "init", "orthogonal", "bias", "forget-bias", "norm-scale",
               "norm-eps", "scale-weight")
KINDS = MODEL_KINDS + TRAINING_KINDS

# The reasons most fixes without an action share (a code, data or optimizer change).
CODE_CHANGE = "needs a change to the model's code that gradcheck does not make"
ARCHITECTURE = "changes the architecture (new layers): a code change gradcheck does not make"
DATA_CHANGE = "changes the input data, outside the model"
OPTIMIZER_CHANGE = "changes the optimizer's configuration, which gradcheck does not rewrite"
NEEDS_TRAINING = "acts on the optimizer step: verified only with --train-steps N"
NOTHING = "not a change (context or a check to do by hand)"


class Fix(str):
    """A fix's text (a str) with the change gradcheck can make itself (`steps`) or why it cannot (`reason`)."""

    steps: tuple[dict[str, Any], ...]
    reason: str | None

    def __new__(cls, text: str, *steps: dict[str, Any], reason: str | None = None) -> "Fix":
        self = super().__new__(cls, text)
        self.steps = tuple(steps)
        self.reason = reason
        return self

    def __getnewargs__(self) -> tuple[str]:   # copy/pickle: the text; steps and reason travel in __dict__
        return (str(self),)


def fix(text: str, *steps: dict[str, Any], reason: str | None = None) -> Fix:
    """A fix a rule suggests; with steps, gradcheck can apply it to a copy and verify it."""
    return Fix(text, *[s for s in steps if s], reason=reason)


def steps_of(text: str) -> tuple[dict[str, Any], ...]:
    return tuple(getattr(text, "steps", ()) or ())


def reason_of(text: str) -> str:
    return getattr(text, "reason", None) or CODE_CHANGE


def needs_training(steps: tuple[dict[str, Any], ...]) -> bool:
    return any(s["kind"] in TRAINING_KINDS for s in steps)


# --- step constructors (rules call these with names and numbers from the statistics) ------------------------
def swap(modules: list[str], to: str, negative_slope: float = 0.01) -> dict[str, Any] | None:
    if not modules:
        return None
    d: dict[str, Any] = {"kind": "swap-activation", "modules": list(modules), "to": to}
    if to == "leaky-relu":
        d["negative_slope"] = negative_slope
    return d


def remove(modules: list[str]) -> dict[str, Any] | None:
    return {"kind": "remove-module", "modules": list(modules)} if modules else None


def init(modules: list[str], scheme: str, *, nonlinearity: str | None = None, gain: float | None = None,
         std: float | None = None, zero_bias: bool = True) -> dict[str, Any] | None:
    if not modules:
        return None
    d: dict[str, Any] = {"kind": "init", "modules": list(modules), "scheme": scheme, "zero_bias": zero_bias}
    for k, v in (("nonlinearity", nonlinearity), ("gain", gain), ("std", std)):
        if v is not None:
            d[k] = v
    return d


def orthogonal(params: list[str], gain: float = 1.0) -> dict[str, Any] | None:
    return {"kind": "orthogonal", "params": list(params), "gain": gain} if params else None


def bias(modules: list[str], value: float = 0.0) -> dict[str, Any] | None:
    return {"kind": "bias", "modules": list(modules), "value": value} if modules else None


def forget_bias(modules: list[str], value: float = 1.0) -> dict[str, Any] | None:
    return {"kind": "forget-bias", "modules": list(modules), "value": value} if modules else None


def norm_scale(modules: list[str], value: float = 1.0) -> dict[str, Any] | None:
    return {"kind": "norm-scale", "modules": list(modules), "value": value} if modules else None


def norm_eps(modules: list[str], value: float = 1e-5) -> dict[str, Any] | None:
    return {"kind": "norm-eps", "modules": list(modules), "value": value} if modules else None


def scale_weight(modules: list[str], factor: float) -> dict[str, Any] | None:
    if not modules or not (math.isfinite(factor) and factor > 0):
        return None
    return {"kind": "scale-weight", "modules": list(modules), "factor": factor}


def lr_probe(factors: tuple[float, ...] = (1 / 3, 1 / 10, 1 / 30)) -> dict[str, Any]:
    return {"kind": "lr-probe", "factors": list(factors)}


def lr_scale(factor: float) -> dict[str, Any] | None:
    if not (math.isfinite(factor) and factor > 0):
        return None
    return {"kind": "lr-scale", "factor": factor}


def clip(max_norm: float) -> dict[str, Any] | None:
    if not (math.isfinite(max_norm) and max_norm > 0):
        return None
    return {"kind": "clip-grad-norm", "max_norm": max_norm}


def add_to_optimizer(params: list[str]) -> dict[str, Any] | None:
    return {"kind": "add-to-optimizer", "params": list(params)} if params else None


# --- wording ------------------------------------------------------------------------------------------------
_ACT = {"relu": "nn.ReLU", "leaky-relu": "nn.LeakyReLU", "sigmoid": "nn.Sigmoid"}


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(n or "(model)" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def describe_step(step: dict[str, Any], detail: dict[str, Any] | None = None) -> str:
    """One step, concretely ("3 modules (0, 2, 4) -> nn.LeakyReLU(0.01)"); `detail`: what the applier
    found (the old types, the learning rates)."""
    k = step["kind"]
    detail = detail or {}
    mods = step.get("modules") or step.get("params") or []
    n = len(mods)
    what = f"{n} module{'s' if n != 1 else ''} ({_names(mods)})"
    if k == "swap-activation":
        to = _ACT.get(step["to"], step["to"])
        if step["to"] == "leaky-relu":
            to += f"({step.get('negative_slope', 0.01):g})"
        old = detail.get("from")
        return f"{what}{' ' + old if old else ''} -> {to}"
    if k == "remove-module":
        return f"{what} replaced by nn.Identity"
    if k == "init":
        scheme = {"kaiming-normal": "kaiming_normal_", "xavier-normal": "xavier_normal_",
                  "normal": "normal_"}.get(step["scheme"], step["scheme"])
        args = []
        if step.get("nonlinearity"):
            args.append(f"nonlinearity={step['nonlinearity']!r}")
        if step.get("gain") is not None:
            args.append(f"gain={fmt(step['gain'])}")
        if step.get("std") is not None:
            args.append(f"std={fmt(step['std'])}")
        return (f"{scheme}({', '.join(args)}) on the weights of {what}"
                + (", biases zeroed" if step.get("zero_bias") else ""))
    if k == "orthogonal":
        return f"orthogonal_(gain={fmt(step.get('gain', 1.0))}) on {n} recurrent weight{'s' if n != 1 else ''} ({_names(mods)})"
    if k == "bias":
        return f"biases of {what} set to {fmt(step['value'])}"
    if k == "forget-bias":
        return f"LSTM forget-gate bias of {what} set to {fmt(step['value'])}"
    if k == "norm-scale":
        return f"normalisation scale (gamma) of {what} set to {fmt(step['value'])}"
    if k == "norm-eps":
        return f"eps of {what} raised to {fmt(step['value'])}"
    if k == "scale-weight":
        return f"weights of {what} scaled by {fmt(step['factor'])}"
    if k in ("lr-probe", "lr-scale"):
        if "lr_before" in detail and "lr_after" in detail:
            return f"learning rate {fmt(detail['lr_before'])} -> {fmt(detail['lr_after'])}"
        return "learning rate " + (f"x{fmt(step['factor'])}" if k == "lr-scale" else "probed")
    if k == "clip-grad-norm":
        return f"clip_grad_norm_(max_norm={fmt(step['max_norm'])}) before each optimizer step"
    if k == "add-to-optimizer":
        return f"{n} parameter{'s' if n != 1 else ''} ({_names(mods)}) added to the optimizer"
    return k
