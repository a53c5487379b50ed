"""Batches: provided (a .pt/.pth/.npz/.npy file, or a callable) or synthetic (from --input-shape)."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from gradcheck_cli.batches_shape import parse_shape  # noqa: F401  (re-exported)
from gradcheck_cli.errors import InputError, UserCodeError, exc_line

DEFAULT_BATCH = 8
DEFAULT_SEQ = 32


class Batch:
    """Positional and keyword inputs, an optional target. With `copy_inputs` (provided batches), every
    read of `args`/`kwargs` is a fresh copy; `tensors()` reads the originals."""

    def __init__(self, args: tuple, kwargs: dict, target: Any = None, token_input: bool = False,
                 copy_inputs: bool = False) -> None:
        self._args, self._kwargs, self.target = args, kwargs, target
        self.token_input, self.copy_inputs = token_input, copy_inputs
        first = next(self.tensors(), None)
        if first is not None and first.numel() == 0:
            raise InputError(f"the batch is empty: {self.describe_shapes()}",
                             hint="give at least one example (a batch dimension of 1 or more)")

    @property
    def args(self) -> tuple:
        return _clone(self._args) if self.copy_inputs else self._args

    @property
    def kwargs(self) -> dict:
        return _clone(self._kwargs) if self.copy_inputs else self._kwargs

    def tensors(self) -> Iterator[torch.Tensor]:
        yield from _tensors(self._args)
        yield from _tensors(self._kwargs)

    def describe_shapes(self) -> str:
        parts = [f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in self.tensors()]
        return "inputs " + ", ".join(parts) if parts else "no tensor inputs"


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def map_tensors(obj: Any, fn: Any) -> Any:
    """`obj` with every tensor in it (through tuples, lists and dict values) replaced by fn(tensor)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(map_tensors(o, fn) for o in obj)
    if isinstance(obj, list):
        return [map_tensors(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _clone(obj: Any) -> Any:
    return map_tensors(obj, torch.Tensor.clone)


def _to(obj: Any, device: torch.device, float_dtype: torch.dtype | None) -> Any:
    def move(t: torch.Tensor) -> torch.Tensor:
        if float_dtype is not None and t.is_floating_point() and t.dtype != float_dtype:
            t = t.to(float_dtype)
        return t.to(device)
    return map_tensors(obj, move)


def _from_numpy(obj: Any) -> Any:
    try:
        import numpy as np
    except ImportError:   # pragma: no cover - numpy ships with most torch installs
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_numpy(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _from_numpy(v) for k, v in obj.items()}
    return obj


def to_batch(obj: Any, where: str) -> Batch:
    """A tensor (inputs only), a (inputs, targets) pair, or a dict of keyword arguments."""
    obj = _from_numpy(obj)
    if isinstance(obj, torch.Tensor):
        return Batch(args=(obj,), kwargs={}, token_input=not obj.is_floating_point())
    if isinstance(obj, (tuple, list)):
        if len(obj) == 2:
            inputs, target = obj
            args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
            first = next(_tensors(args), None)
            if first is None:
                raise InputError(f"{where}: the inputs of the (inputs, targets) pair hold no tensor")
            return Batch(args=args, kwargs={}, target=target, token_input=not first.is_floating_point())
        if len(obj) == 1:
            return to_batch(obj[0], where)
        raise InputError(f"{where}: a batch list/tuple must be (inputs, targets); got {len(obj)} items",
                         hint="return a tensor, an (inputs, targets) pair, or a dict of keyword arguments")
    if isinstance(obj, dict) or (hasattr(obj, "keys") and hasattr(obj, "__getitem__")):
        kwargs = {str(k): obj[k] for k in obj.keys()}
        if not any(True for _ in _tensors(kwargs)):
            raise InputError(f"{where}: the batch dict holds no tensor")
        ids = kwargs.get("input_ids")
        return Batch(args=(), kwargs=kwargs,
                     token_input=isinstance(ids, torch.Tensor) and not ids.is_floating_point())
    raise InputError(f"{where}: a batch must be a tensor, an (inputs, targets) pair or a dict; "
                     f"got {type(obj).__name__}")


def _on_device(b: Batch, device: torch.device, float_dtype: torch.dtype | None) -> Batch:
    """The batch moved to `device`, floating inputs cast to the model's dtype (targets keep theirs)."""
    return Batch(args=_to(b.args, device, float_dtype), kwargs=_to(b.kwargs, device, float_dtype),
                 target=_to(b.target, device, None), token_input=b.token_input)


def _fresh(b: Batch) -> Batch:
    """A batch whose forward inputs are copied on each read: a model that modifies its input in place
    (x.div_(...), x[mask] = ...) changes its own copy, never the user's batch, the next step's inputs or the
    NaN/Inf check of the inputs (which reads the originals)."""
    b.copy_inputs = True
    return b


def model_float_dtype(model: nn.Module) -> torch.dtype | None:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


class FixedBatches:
    """One batch, used for every step."""

    def __init__(self, batch: Batch, description: str, float_dtype: torch.dtype | None) -> None:
        self.batch = batch
        self.description = description
        self.float_dtype = float_dtype

    def get(self, step: int, device: torch.device) -> Batch:
        return _fresh(_on_device(self.batch, device, self.float_dtype))


class CallableBatches:
    """A user callable called once per step (or an iterator/iterable drawn from once per step)."""

    def __init__(self, obj: Any, spec: str, float_dtype: torch.dtype | None) -> None:
        self.spec = spec
        self.description = f"from {spec}"
        self.float_dtype = float_dtype
        self.obj = obj
        self._iter: Iterator | None = None
        if not callable(obj) and hasattr(obj, "__iter__"):
            self._iter = iter(obj)
        # --verify-fixes: the batches drawn, in call order, so a re-run on a changed copy gets the same ones
        self._recorded: list[Batch] | None = None
        self._next: int | None = None

    def record(self) -> None:
        """Keep every batch drawn from now on (for replay())."""
        self._recorded = []

    def forget(self) -> None:
        self._recorded, self._next = None, None

    def replay(self) -> None:
        """The next gets return the recorded batches from the first, in order; past the end, new ones."""
        if self._recorded is not None:
            self._next = 0

    def get(self, step: int, device: torch.device) -> Batch:
        if self._next is not None and self._recorded is not None and self._next < len(self._recorded):
            self._next += 1
            return _fresh(_on_device(self._recorded[self._next - 1], device, self.float_dtype))
        b = self._draw(step)
        if self._recorded is not None:
            self._recorded.append(b)
            if self._next is not None:
                self._next += 1
        return _fresh(_on_device(b, device, self.float_dtype))

    def _draw(self, step: int) -> Batch:
        try:
            if self._iter is not None:
                raw = next(self._iter)
            else:
                raw = self.obj()
                if inspect.isgenerator(raw) or (hasattr(raw, "__next__") and not isinstance(raw, torch.Tensor)):
                    self._iter = raw
                    raw = next(self._iter)
        except StopIteration:
            raise InputError(f"batch source {self.spec} ran out of batches at step {step + 1}",
                             hint="provide at least --steps batches, or lower --steps") from None
        except (InputError, UserCodeError):
            raise
        except (Exception, SystemExit) as exc:
            raise UserCodeError(exc_line(exc), phase="batch", where=self.spec,
                                original=exc) from exc
        return to_batch(raw, self.spec)


@dataclass
class SyntheticBatches:
    """Different seeded batches per step: float N(0,1) inputs, or token ids for embedding-first models."""

    shape: tuple[int, ...]
    seed: int
    float_dtype: torch.dtype | None
    vocab: int | None = None
    description: str = field(init=False)

    def __post_init__(self) -> None:
        dims = "x".join(str(d) for d in self.shape)
        self.description = (f"synthetic token ids {dims} in [0, {self.vocab})" if self.vocab
                            else f"synthetic N(0,1) {dims}")

    def get(self, step: int, device: torch.device) -> Batch:
        g = torch.Generator().manual_seed(self.seed * 7919 + step)
        try:
            if self.vocab:
                x = torch.randint(0, self.vocab, self.shape, generator=g)
                return Batch(args=(x.to(device),), kwargs={}, token_input=True)
            x = torch.randn(self.shape, generator=g, dtype=self.float_dtype or torch.float32)
            return Batch(args=(x.to(device),), kwargs={})
        except (RuntimeError, MemoryError) as exc:   # an allocation failure: the shape is too large here
            raise InputError(f"cannot allocate the synthetic batch of shape {self.shape}: out of memory "
                             f"({exc_line(exc, 120)})",
                             hint="use a smaller --input-shape (the batch dimension first)") from None


def first_layer(model: nn.Module) -> nn.Module | None:
    for _, mod in model.named_modules():
        if any(True for _ in mod.parameters(recurse=False)) and mod is not model:
            return mod
    return None


def infer_input_shape(model: nn.Module) -> tuple[int, ...]:
    """A plausible input shape from the first layer; InputError when there is no safe guess."""
    m = first_layer(model)
    b = DEFAULT_BATCH
    if isinstance(m, nn.Embedding):
        return (b, DEFAULT_SEQ)
    if isinstance(m, nn.Linear):
        return (b, m.in_features)
    if isinstance(m, nn.Conv1d):
        return (b, m.in_channels, 64)
    if isinstance(m, nn.Conv2d):
        return (b, m.in_channels, 32, 32)
    if isinstance(m, nn.Conv3d):
        return (b, m.in_channels, 16, 16, 16)
    if isinstance(m, (nn.RNN, nn.LSTM, nn.GRU)):
        return (b, DEFAULT_SEQ, m.input_size) if m.batch_first else (DEFAULT_SEQ, b, m.input_size)
    what = type(m).__name__ if m is not None else "no layer with parameters"
    raise InputError(f"cannot infer an input shape from the model's first layer ({what})",
                     hint="pass --input-shape, e.g. --input-shape 8,3,32,32, or --batch FILE")


def load_batch_file(path: Path) -> Batch:
    from gradcheck_cli.paths import input_file

    input_file(path, "batch", flag="--batch")
    suffix = path.suffix.lower()
    where = str(path)
    if suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle refused, corrupt, truncated
            raise _load_error(path, exc) from None
        return to_batch(obj, where)
    if suffix in (".npz", ".npy"):
        try:
            import numpy as np
        except ImportError:
            raise InputError(f"reading {suffix} batch files needs numpy", hint="pip install numpy") from None
        try:
            data = np.load(path, allow_pickle=False)
            if suffix == ".npy":
                return to_batch(data, where)
            with data:   # .npz members are read lazily: an object array fails here, not at np.load
                arrays = {k: data[k] for k in data.files}
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"cannot read batch file {path}: {exc_line(exc, 200)}",
                             hint="numeric arrays only: object arrays are refused (allow_pickle=False)") from None
        for a, b in (("inputs", "targets"), ("x", "y"), ("input", "target")):
            if set(arrays) == {a, b}:
                return to_batch((arrays[a], arrays[b]), where)
        if set(arrays) in ({"inputs"}, {"x"}, {"input"}):
            return to_batch(next(iter(arrays.values())), where)
        return to_batch(arrays, where)
    raise InputError(f"unsupported batch file type {suffix!r}: {path}",
                     hint="use .pt/.pth, .npz, .npy, or a file.py:NAME callable")


def _load_error(path: Path, exc: Exception) -> InputError:
    """A one-line reason from torch.load's long message: a refused pickled object, or a damaged file."""
    text = str(exc)
    m = re.search(r"unsupported GLOBAL ([\w.]+)", text) or re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m:
        return InputError(f"refused batch file {path}: it holds a pickled Python object ({m.group(1)}) that needs "
                          "code to load, and gradcheck loads with weights_only=True",
                          hint="save plain tensors, tuples, lists or dicts of tensors with torch.save")
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    detail = next((l for l in lines if l.startswith(("Unsupported", "invalid", "PytorchStreamReader", "EOF"))),
                  lines[-1] if lines else type(exc).__name__)
    if "WeightsUnpickler" in text or "weights_only" in text:
        detail = next((l for l in lines if "Unsupported operand" in l or "invalid load key" in l), detail)
    return InputError(f"cannot read batch file {path}: not a valid torch.save file ({detail[:160]})",
                      hint="re-create it with torch.save(batch, path); .npz/.npy and file.py:NAME also work")


def make_batch_source(spec: str | None, input_shape: tuple[int, ...] | None, model: nn.Module, seed: int):
    from gradcheck_cli import loading

    float_dtype = model_float_dtype(model)
    if spec:
        path = Path(spec)
        if path.suffix.lower() in (".pt", ".pth", ".npz", ".npy"):
            batch = load_batch_file(path)
            return FixedBatches(batch, f"{path} ({batch.describe_shapes()})", float_dtype)
        obj = loading.load_object(spec, what="batch")
        if isinstance(obj, (torch.Tensor, tuple, list, dict)):
            return FixedBatches(to_batch(obj, spec), f"from {spec}", float_dtype)
        return CallableBatches(obj, spec, float_dtype)
    shape = input_shape or infer_input_shape(model)
    first = first_layer(model)
    vocab = first.num_embeddings if isinstance(first, nn.Embedding) else None
    return SyntheticBatches(shape=shape, seed=seed, float_dtype=float_dtype, vocab=vocab)
