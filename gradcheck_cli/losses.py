"""Loss functions: built-in names, a user callable, or the model's own `.loss`; target synthesis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from gradcheck_cli.errors import InputError

BUILTIN = ("cross-entropy", "mse", "bce-with-logits")


@dataclass
class LossFn:
    name: str                           # "auto", one of BUILTIN, or "callable"
    fn: Callable | None = None
    spec: str | None = None
    # What the last computed loss was, for the initial-loss rule and the report (set by `compute`):
    kind: str | None = None             # "cross-entropy" | "bce-with-logits" | "mse" | "model" | "callable" | "several"
    classes: int | None = None          # cross-entropy: number of classes (C, or V for a language model)
    outputs: list[str] | None = None    # the model outputs the loss was computed on ("output", "output[1]", "logits")
    ignored: list[str] | None = None    # outputs holding float tensors that the default loss could not use

    @property
    def description(self) -> str:
        if self.name == "callable":
            return f"{self.spec}"
        return self.name


def resolve(spec: str | None) -> LossFn:
    if spec is None or spec == "auto":
        return LossFn("auto")
    if spec in BUILTIN:
        return LossFn(spec)
    if ":" in spec:
        from gradcheck_cli import loading

        fn = loading.load_object(spec, what="loss")
        if not callable(fn):
            raise InputError(f"--loss {spec}: {type(fn).__name__} is not callable",
                             hint="point to a function (output, target) -> scalar tensor")
        return LossFn("callable", fn=fn, spec=spec)
    raise InputError(f"unknown --loss {spec!r}: expected one of {', '.join(BUILTIN)} or file.py:NAME")


def model_loss(output: Any) -> torch.Tensor | None:
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    return loss if isinstance(loss, torch.Tensor) else None


def primary_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a loss is computed on: the output itself, `.logits`, the first tensor of a tuple/list,
    or the first tensor value of a dict (Hugging Face ModelOutput) other than "loss"."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, dict):
        for key, item in output.items():
            if key != "loss" and isinstance(item, torch.Tensor):
                return item
        return None
    if isinstance(output, (tuple, list)):
        for item in output:
            t = primary_tensor(item)
            if t is not None:
                return t
    return None


def named_outputs(output: Any, prefix: str = "output") -> list[tuple[str, torch.Tensor]]:
    """Every tensor a default loss can be computed on, named for the report: the output itself; for a
    Hugging Face ModelOutput its `*logits` entries when there are any (hidden states, attentions and caches
    are not predictions); for a dict every tensor value except "loss"; for a tuple/list every tensor in it
    (nested tuples and dicts included)."""
    if isinstance(output, torch.Tensor):
        return [(prefix, output)]
    items: list[tuple[str, Any]] = []
    if isinstance(output, dict) or (hasattr(output, "keys") and hasattr(output, "__getitem__")
                                    and not isinstance(output, (tuple, list))):
        try:
            keys = [k for k in output.keys() if k != "loss"]
        except Exception:   # pragma: no cover - an unusual mapping
            keys = []
        # A Hugging Face ModelOutput also carries hidden states, attentions and caches: only its logits are
        # predictions. A plain dict's tensors are all outputs.
        hf = hasattr(output, "to_tuple")
        logit_keys = [k for k in keys if hf and "logits" in str(k) and isinstance(output[k], torch.Tensor)]
        items = [(str(k) if prefix == "output" else f"{prefix}.{k}", output[k]) for k in (logit_keys or keys)]
    elif isinstance(output, (tuple, list)):
        items = [(f"{prefix}[{i}]", item) for i, item in enumerate(output)]
    else:
        logits = getattr(output, "logits", None)
        return [("logits", logits)] if isinstance(logits, torch.Tensor) else []
    out: list[tuple[str, torch.Tensor]] = []
    for name, item in items:
        if isinstance(item, torch.Tensor):
            out.append((name, item))
        elif isinstance(item, (tuple, list, dict)):
            out.extend(named_outputs(item, name))
    return out


def _classification_shaped(pred: torch.Tensor, token_input: bool) -> bool:
    if pred.dim() == 2 and pred.shape[1] > 1:
        return True
    return pred.dim() == 3 and token_input and pred.shape[-1] > 1


def synth_target(kind: str, pred: torch.Tensor, gen: torch.Generator, part: tuple[int, int, int] | None = None
                 ) -> torch.Tensor:
    """part: (lo, hi, B) when pred is rows lo:hi of a global batch of B (a rank under torchrun): the
    global batch's targets are drawn and rows lo:hi returned, so N ranks see one process's targets."""
    if part is not None and pred.dim() >= 1 and pred.shape[0] == part[1] - part[0]:
        lo, hi, b = part
        return _synth(kind, (b,) + tuple(pred.shape[1:]), pred.dtype, gen)[lo:hi].to(pred.device)
    return _synth(kind, tuple(pred.shape), pred.dtype, gen).to(pred.device)


def _synth(kind: str, shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    if kind == "cross-entropy":
        if len(shape) == 3:                       # (B, T, V) language-model logits
            t = torch.randint(0, shape[-1], shape[:2], generator=gen)
        elif len(shape) >= 2:                     # (B, C) or (B, C, *spatial)
            t = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=gen)
        else:
            raise InputError(f"cross-entropy needs an output of shape (batch, classes, ...); got {shape}",
                             hint="pass --loss mse or a --loss callable")
    elif kind == "bce-with-logits":
        t = torch.randint(0, 2, shape, generator=gen).to(dtype)
    else:
        t = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
    return t


def _cross_entropy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if pred.dim() == 3 and target.dim() == 2 and tuple(target.shape) == tuple(pred.shape[:2]):
        return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1))
    return F.cross_entropy(pred, target)


_BUILTIN_FN = {
    "cross-entropy": _cross_entropy,
    "mse": lambda p, t: F.mse_loss(p, t.to(p.dtype)),
    "bce-with-logits": lambda p, t: F.binary_cross_entropy_with_logits(p, t.to(p.dtype).reshape(p.shape)),
}


def _auto_kind(pred: torch.Tensor, target: Any, token_input: bool) -> str:
    if target is not None:
        integer = isinstance(target, torch.Tensor) and not target.is_floating_point()
        if integer and (pred.dim() == 1 or pred.shape[-1] == 1):
            return "bce-with-logits"     # one logit per example: binary labels
        return "cross-entropy" if integer else "mse"
    return "cross-entropy" if _classification_shaped(pred, token_input) else "mse"


def _fits(pred: torch.Tensor, target: Any) -> bool:
    """Whether a provided target can be the target of this output."""
    if not isinstance(target, torch.Tensor):
        return False
    if target.is_floating_point():
        return tuple(target.shape) == tuple(pred.shape) or target.numel() == pred.numel()
    if pred.dim() == 1 or (pred.dim() >= 1 and pred.shape[-1] == 1):
        return target.numel() == pred.numel()
    if pred.dim() == 3 and tuple(target.shape) == tuple(pred.shape[:2]):
        return bool(target.numel() == 0 or int(target.max()) < pred.shape[-1])
    if pred.dim() >= 2 and tuple(target.shape) == (pred.shape[0],) + tuple(pred.shape[2:]):
        return bool(target.numel() == 0 or (int(target.min()) >= 0 and int(target.max()) < pred.shape[1]))
    return False


def _several(loss_fn: LossFn, outputs: list[tuple[str, torch.Tensor]], batch: Any, gen: torch.Generator
             ) -> tuple[torch.Tensor, str]:
    """The default loss of a model with several outputs: one term per output it can build a target for
    (a provided target where it fits, by position or key when targets are a tuple/dict; synthetic
    otherwise), summed."""
    target = batch.target
    terms, parts, used, ignored = [], [], [], []
    for i, (name, pred) in enumerate(outputs):
        if not (pred.is_floating_point() or pred.is_complex()) or not pred.requires_grad or pred.numel() == 0:
            if pred.is_floating_point() and not pred.requires_grad:
                ignored.append(name)
            continue
        t = None
        if isinstance(target, (tuple, list)) and len(target) == len(outputs):
            t = target[i]
        elif isinstance(target, dict):
            t = target.get(name)
        elif isinstance(target, torch.Tensor):
            t = target
        if t is not None and not _fits(pred, t):
            t = None
        kind = _auto_kind(pred, t, batch.token_input)
        synthetic = t is None
        if synthetic:
            try:
                t = synth_target(kind, pred, gen)
            except InputError:
                ignored.append(name)
                continue
        terms.append(_BUILTIN_FN[kind](pred, t))
        parts.append(f"{kind} on {name}{' (synthetic targets)' if synthetic else ''}")
        used.append(name)
    if not terms:
        raise InputError("none of the model's outputs is a floating-point tensor connected to the parameters",
                         hint="return the logits/scores, or pass --loss file.py:NAME")
    loss_fn.kind, loss_fn.classes, loss_fn.outputs, loss_fn.ignored = "several", None, used, ignored or None
    loss = terms[0]
    for t in terms[1:]:
        loss = loss + t
    groups: dict[str, list[str]] = {}
    for part in parts:
        kind, _, rest = part.partition(" on ")
        groups.setdefault(kind, []).append(rest)
    body = "; ".join(f"{kind} on {', '.join(names)}" for kind, names in groups.items())
    if all(p.endswith(" (synthetic targets)") for p in parts):
        body = body.replace(" (synthetic targets)", "") + " (synthetic targets)"
    return loss, f"sum over {len(terms)} outputs: {body}"


def compute(loss_fn: LossFn, output: Any, batch: Any, step: int, seed: int
            ) -> tuple[torch.Tensor, str, str | None]:
    """Return (scalar loss, description, note-or-None)."""
    gen = torch.Generator().manual_seed(seed * 104_729 + step + 17)
    target = batch.target
    note = None
    loss_fn.kind, loss_fn.classes, loss_fn.outputs, loss_fn.ignored = None, None, None, None
    if loss_fn.name == "auto":
        own = model_loss(output)
        if own is not None:
            if own.dim() > 0 and own.numel() > 1:
                note = (f"the model's own .loss has shape {tuple(own.shape)}, not a scalar; it was reduced "
                        "with mean()")
                own = own.mean()
            loss_fn.kind, loss_fn.outputs = "model", ["loss"]
            return _check_loss(own, "the model's own .loss"), "model's own .loss", note
        outputs = named_outputs(output)
        if len(outputs) > 1:
            loss, desc = _several(loss_fn, outputs, batch, gen)
            return _check_loss(loss, desc), desc, note
    pred = primary_tensor(output)
    if pred is None:
        raise InputError(f"the model returned {type(output).__name__}, which holds no tensor to compute a loss on",
                         hint="return a tensor (or an object with .loss/.logits), or pass --loss file.py:NAME")
    if loss_fn.name != "callable" and not (pred.is_floating_point() or pred.is_complex()):
        raise InputError(f"the model output is an integer tensor ({str(pred.dtype).replace('torch.', '')}, shape "
                         f"{tuple(pred.shape)}); it carries no gradient",
                         hint="return the logits/scores, not argmax/indices, or pass --loss file.py:NAME")
    kind = _auto_kind(pred, target, batch.token_input) if loss_fn.name == "auto" else loss_fn.name
    synthetic = target is None
    if synthetic:
        target = synth_target("cross-entropy" if kind == "callable" and _classification_shaped(
            pred, batch.token_input) else kind, pred, gen, getattr(batch, "part", None))
    loss = loss_fn.fn(output, target) if kind == "callable" else _BUILTIN_FN[kind](pred, target)
    desc = loss_fn.description if kind == "callable" else kind
    if synthetic:
        desc += " (synthetic targets)"
    loss_fn.kind = kind
    loss_fn.outputs = [next((n for n, t in named_outputs(output) if t is pred), "output")]
    if kind == "cross-entropy" and pred.dim() >= 2:
        last = pred.dim() == 3 and isinstance(target, torch.Tensor) and tuple(target.shape) == tuple(pred.shape[:2])
        loss_fn.classes = int(pred.shape[-1] if last else pred.shape[1])
    elif kind == "bce-with-logits":
        loss_fn.classes = 2
    if isinstance(loss, torch.Tensor) and loss.dim() > 0 and loss.numel() > 1:
        note = f"the loss returned shape {tuple(loss.shape)}, not a scalar; it was reduced with mean()"
        loss = loss.mean()
    return _check_loss(loss, desc), desc, note


def _check_loss(loss: Any, desc: str) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise InputError(f"the loss ({desc}) returned {type(loss).__name__}, not a tensor",
                         hint="return a scalar torch tensor")
    if loss.numel() != 1:
        raise InputError(f"the loss ({desc}) returned an empty tensor of shape {tuple(loss.shape)}")
    if not (loss.is_floating_point() or loss.is_complex()):
        raise InputError(f"the loss ({desc}) is an integer tensor ({loss.dtype}); it carries no gradient",
                         hint="compute the loss from floating-point model outputs")
    if not loss.requires_grad:
        raise InputError(f"the loss ({desc}) does not require grad: the model output is detached "
                         "(torch.no_grad, .detach(), .item() or integer outputs) or no trainable parameter reaches it",
                         hint="make sure forward returns tensors connected to the parameters")
    return loss.reshape(())
