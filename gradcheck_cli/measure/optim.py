"""The training rehearsal's optimizer: a built-in one (sgd, adam, adamw) or a user's factory, and the
changes a verified fix makes to it (learning rate scaled, missing parameters added as a group)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn as nn

from gradcheck_cli.deadline import set_phase
from gradcheck_cli.errors import InputError, UserCodeError, exc_line

OPTIMIZERS = ("sgd", "adam", "adamw")
DEFAULT_LR = {"sgd": 1e-2, "adam": 1e-3, "adamw": 1e-3}


def build_optimizer(spec: str, lr: float | None, model: nn.Module) -> tuple[Any, Any, str, float | None]:
    """(optimizer, scheduler or None, description, lr of the first group)."""
    if spec in OPTIMIZERS:
        rate = DEFAULT_LR[spec] if lr is None else lr
        params = [p for p in model.parameters() if p.requires_grad]
        if spec == "sgd":
            opt = torch.optim.SGD(params, lr=rate, momentum=0.9)
            desc = f"sgd (lr {rate:g}, momentum 0.9)"
        elif spec == "adam":
            opt = torch.optim.Adam(params, lr=rate)
            desc = f"adam (lr {rate:g})"
        else:
            opt = torch.optim.AdamW(params, lr=rate)
            desc = f"adamw (lr {rate:g}, weight decay 0.01)"
        return opt, None, desc, rate
    from gradcheck_cli import loading

    if ":" not in spec:
        raise InputError(f"unknown optimizer {spec!r}: expected one of {', '.join(OPTIMIZERS)}, FILE.py:NAME "
                         "or pkg.mod:NAME")
    factory = loading.load_object(spec, what="optimizer")
    if not callable(factory):
        raise InputError(f"optimizer {spec}: {type(factory).__name__} is not callable",
                         hint="point to a function (model) or (params) returning a torch.optim.Optimizer")
    try:
        first = next(iter(inspect.signature(factory).parameters), None)
    except (TypeError, ValueError):
        first = None
    set_phase("optimizer")
    try:
        made = factory(model) if first == "model" else factory(model.parameters())
    except (InputError, UserCodeError):
        raise
    except Exception as exc:
        raise UserCodeError(exc_line(exc), phase="optimizer", where=spec, original=exc) from exc
    sched = None
    if isinstance(made, tuple) and len(made) == 2:
        made, sched = made
    if not isinstance(made, torch.optim.Optimizer):
        raise InputError(f"optimizer factory {spec} returned {type(made).__name__}, not a torch.optim.Optimizer",
                         hint="return an optimizer, or (optimizer, scheduler)")
    if lr is not None:
        for g in made.param_groups:
            g["lr"] = lr
    rate = made.param_groups[0].get("lr") if made.param_groups else None
    rate = float(rate) if isinstance(rate, (int, float)) else None
    return made, sched, spec + (f" (lr {rate:g})" if rate is not None else ""), rate


def change_optimizer(opt: Any, net: nn.Module, desc: str, lr: float | None, *, lr_scale: float,
                     add_params: tuple[str, ...]) -> tuple[str, float | None]:
    """A verified fix: scale every group's learning rate, add the missing parameters as a group."""
    if lr_scale != 1.0:
        for g in opt.param_groups:
            g["lr"] = g["lr"] * lr_scale
            if "initial_lr" in g:
                g["initial_lr"] = g["initial_lr"] * lr_scale
        lr = lr * lr_scale if lr is not None else None
        desc = f"{desc} x{lr_scale:g}"
    if add_params:
        named = dict(net.named_parameters())
        have = {id(p) for g in opt.param_groups for p in g["params"]}
        extra = [named[n] for n in add_params if n in named and id(named[n]) not in have]
        if extra:
            opt.add_param_group({"params": extra})
    return desc, lr
