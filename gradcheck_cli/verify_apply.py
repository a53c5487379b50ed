"""--verify-fixes, the changes: apply a fix's steps (plain data written by the rules, gradcheck_cli/fixes.py) to
a module. The only place in gradcheck that changes a module; gradcheck_cli/verify.py calls it on a
`copy.deepcopy` of the model, never on the user's object. Steps that belong to the training rehearsal (learning
rate, clipping, optimizer parameters) are left to it.
"""

from __future__ import annotations

from typing import Any

from gradcheck_cli import fixes as X


class NotApplicable(Exception):
    """The fix's action does not fit this model (a module that is not where the statistics said, a gate)."""


# --- applying steps to a module (torch) -----------------------------------------------------------------------
def _module(model: Any, name: str) -> Any:
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        raise NotApplicable(f"no module named {name!r} in the model") from None


def _set_module(model: Any, name: str, new: Any) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = _module(model, parent_name)
    if child.isdigit() and hasattr(parent, "__setitem__") and not hasattr(parent, child):
        parent[int(child)] = new
    else:
        setattr(parent, child, new)


GATE_HINTS = ("gate", "gating", "squeeze", "excit", "attn", "attention")


def apply_steps(model: Any, steps: tuple[dict[str, Any], ...], seed: int) -> list[dict[str, Any]]:
    """Apply a fix's model steps to `model` (a copy), seeded; returns a detail per step (e.g. old types).
    Training steps are left to the rehearsal (TrainSettings). Raises NotApplicable."""
    import torch
    import torch.nn as nn

    details: list[dict[str, Any]] = []
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            for step in steps:
                details.append(_apply_one(model, step, nn, torch))
    finally:
        torch.random.set_rng_state(gen_state)
    return details


_ACTIVATIONS = ("Sigmoid", "Tanh", "ReLU", "ReLU6", "LeakyReLU", "ELU", "GELU", "SiLU", "Softmax", "Hardtanh",
                "Hardsigmoid", "Identity")


def _apply_one(model: Any, step: dict[str, Any], nn: Any, torch: Any) -> dict[str, Any]:
    kind = step["kind"]
    if kind in X.TRAINING_KINDS:
        return {}
    if kind == "swap-activation":
        olds = []
        for name in step["modules"]:
            m = _module(model, name)
            if type(m).__name__ not in _ACTIVATIONS or list(m.parameters(recurse=False)):
                raise NotApplicable(f"{name} is a {type(m).__name__}, not a parameter-free activation module")
            if any(h in name.lower() for h in GATE_HINTS):
                raise NotApplicable(f"{name} looks like a gate; gates keep their sigmoid")
            # (an nn.Softmax is swapped only when the rule found it over a size-1 dimension, where it is
            # constant 1 and sigmoid of that one value is the intended probability)
            to = step["to"]
            new = (nn.ReLU() if to == "relu" else nn.LeakyReLU(step.get("negative_slope", 0.01)) if to == "leaky-relu"
                   else nn.Sigmoid() if to == "sigmoid" else None)
            if new is None:
                raise NotApplicable(f"unknown activation {to!r}")
            new.train(m.training)
            _set_module(model, name, new)
            olds.append(type(m).__name__)
        kinds = sorted(set(olds))
        return {"from": "/".join(f"nn.{k}" for k in kinds)}
    if kind == "remove-module":
        for name in step["modules"]:
            m = _module(model, name)
            if list(m.parameters()):
                raise NotApplicable(f"{name} owns parameters; only parameter-free modules are removed")
            _set_module(model, name, nn.Identity())
        return {}
    if kind == "init":
        for name in step["modules"]:
            m = _module(model, name)
            w = getattr(m, "weight", None)
            if not isinstance(w, torch.Tensor) or w.dim() < 2:
                raise NotApplicable(f"{name} has no weight matrix to initialise")
            scheme = step["scheme"]
            if scheme == "kaiming-normal":
                nn.init.kaiming_normal_(w, nonlinearity=step.get("nonlinearity") or "relu")
            elif scheme == "xavier-normal":
                gain = step.get("gain")
                if gain is None:
                    gain = nn.init.calculate_gain(step["nonlinearity"]) if step.get("nonlinearity") else 1.0
                nn.init.xavier_normal_(w, gain=gain)
            elif scheme == "normal":
                nn.init.normal_(w, std=step.get("std", 0.02))
            else:
                raise NotApplicable(f"unknown init scheme {scheme!r}")
            b = getattr(m, "bias", None)
            if step.get("zero_bias") and isinstance(b, torch.Tensor):
                nn.init.zeros_(b)
        return {}
    if kind == "orthogonal":
        for pname in step["params"]:
            mod_name, _, attr = pname.rpartition(".")
            p = getattr(_module(model, mod_name), attr, None)
            if not isinstance(p, torch.Tensor) or p.dim() != 2:
                raise NotApplicable(f"{pname} is not a weight matrix")
            nn.init.orthogonal_(p, gain=step.get("gain", 1.0))
        return {}
    if kind == "bias":
        for name in step["modules"]:
            b = getattr(_module(model, name), "bias", None)
            if not isinstance(b, torch.Tensor):
                raise NotApplicable(f"{name} has no bias")
            b.fill_(step["value"])
        return {}
    if kind == "forget-bias":
        for name in step["modules"]:
            m = _module(model, name)
            if not isinstance(m, nn.LSTM):
                raise NotApplicable(f"{name} is not an nn.LSTM")
            h = m.hidden_size
            if not m.bias:
                raise NotApplicable(f"{name} has no biases (bias=False)")
            for pname, p in m.named_parameters():
                if pname.startswith("bias_"):
                    # PyTorch orders the gates (input, forget, cell, output); bias_ih + bias_hh is the bias
                    p[h:2 * h].fill_(step["value"] / 2)
        return {}
    if kind == "norm-scale":
        for name in step["modules"]:
            w = getattr(_module(model, name), "weight", None)
            if not isinstance(w, torch.Tensor):
                raise NotApplicable(f"{name} has no scale (weight)")
            w.fill_(step["value"])
        return {}
    if kind == "norm-eps":
        for name in step["modules"]:
            m = _module(model, name)
            if not hasattr(m, "eps"):
                raise NotApplicable(f"{name} has no eps")
            m.eps = max(float(m.eps or 0.0), step["value"])
        return {}
    if kind == "scale-weight":
        for name in step["modules"]:
            m = _module(model, name)
            for attr in ("weight", "bias"):
                p = getattr(m, attr, None)
                if isinstance(p, torch.Tensor):
                    p.mul_(step["factor"])
        return {}
    raise NotApplicable(f"unknown change {kind!r}")
