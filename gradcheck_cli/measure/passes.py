"""The drivers. `Monitor` is the measuring core behind an attach / step / detach interface: hooks, the
functional watch and the accumulator, for any loop. `run_passes` is today's check: it owns forward,
loss and backward (gradients from torch.autograd.grad, so the user's .grad is never written), runs the
model in training mode on a snapshot it restores, and re-runs a non-finite step once to diagnose it.

In a user's own loop the monitor reads `p.grad` after the user's backward:

    mon = Monitor(model).attach()
    for x, y in loader:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        mon.step(loss, grad_scale=scaler.get_scale())   # statistics unscaled under AMP
        scaler.step(opt); scaler.update()
    mon.detach()
    stats = mon.finish()
"""

from __future__ import annotations

import gc
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn

from gradcheck_cli import stats as S
from gradcheck_cli.deadline import RunTimeout, set_phase
from gradcheck_cli.errors import InputError, UserCodeError, exc_line
from gradcheck_cli.measure import kernels as K
from gradcheck_cli.measure import model_state
from gradcheck_cli.measure.accumulate import Accumulator
from gradcheck_cli.measure.functional import FunctionalState, FunctionalWatch, module_at
from gradcheck_cli.measure.hooks import Hooks
from gradcheck_cli.measure.inventory import Inventory
from gradcheck_cli.measure.record import Recorder, StepRecord
from gradcheck_cli.measure.weights import weight_stats


class Monitor:
    """Hooks and accumulator on one model. attach() installs the hooks, step() closes a step (one host
    transfer) and returns its summary, detach() removes every hook, finish() gives the RunStats."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.attached = False

    def attach(self) -> "Monitor":
        self.inv = Inventory(self.model)
        self.sink = Recorder()
        self.hooks = Hooks(self.inv, self.sink)
        self.functional = FunctionalState(self.hooks)
        self.acc = Accumulator(self.inv)
        self.acc.reduce_vectors = getattr(self, "reduce_vectors", None)
        self.weight_stats(self.inv)
        self.hooks.install()
        self.attached = True
        self.hooks.begin_pass()
        return self

    def weight_stats(self, inv: Inventory) -> None:
        """Weight statistics, once at attach (measure.distributed.DistMonitor: from sharded parameters)."""
        weight_stats(inv)

    def reduce(self, record: StepRecord) -> StepRecord:
        """A step's record before it is folded (measure.distributed.DistMonitor: reduced across ranks)."""
        return record

    def detach(self) -> None:
        if self.attached:
            self.hooks.remove()
            self.sink.clear()
            self.attached = False

    def __enter__(self) -> "Monitor":
        return self.attach() if not self.attached else self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def watch_functional(self) -> FunctionalWatch:
        """A context manager to run a forward in: functional activations (and, diagnosing, risky ops) are
        measured too."""
        return FunctionalWatch(self.functional)

    @property
    def diagnose(self) -> bool:
        return self.hooks.diagnose

    def begin_step(self) -> None:
        self.hooks.begin_pass()

    def step(self, loss: torch.Tensor | None = None, grads: Sequence[torch.Tensor | None] | None = None, *,
             grad_scale: float | Any = 1.0, grads_unscaled: bool = False) -> dict[str, Any] | None:
        """Close the current step. grads: the trainable parameters' gradients (as Monitor.params) when the
        driver took them itself; by default each parameter's `.grad`, left by the user's backward.
        grad_scale: the loss-scaling factor of that backward (a float, or a GradScaler); with
        grads_unscaled the .grad values were already unscaled (scaler.unscale_) but the output gradients
        seen in backward were not. Returns {loss, total_grad_norm, nonfinite}, or None in a diagnosis."""
        if hasattr(grad_scale, "get_scale"):
            grad_scale = float(grad_scale.get_scale())
        params = self.inv.params
        if grads is None:
            grads = [p.grad for p in params]
        present = [i for i, g in enumerate(grads[:len(params)]) if g is not None]
        slot = ("params", tuple(present))
        if present and self.hooks.diagnose:   # exact: which parameters' gradients hold NaN/Inf
            self.sink.add_vector(slot, "pgrad_bad", torch.stack([K.has_nonfinite(grads[i]) for i in present]))
        elif present:
            self.sink.add_vector(slot, "pgrad", K.sumsq_many([grads[i].detach() for i in present]))
        if loss is not None:
            self.sink.add_vector(None, "loss", loss.detach().reshape(1).to(torch.float32))
        self.hooks.end_pass()
        self.hooks.emit_step_end()
        record = self.reduce(self.sink.flush())
        self.last_record = record
        self.hooks.begin_pass()
        if self.hooks.diagnose:
            self.acc.fold_diagnosis(record, self.functional.op_list)
            return None
        return self.acc.fold(record, grad_scale=float(grad_scale),
                             param_grad_scale=1.0 if grads_unscaled else float(grad_scale))

    def finish(self) -> S.RunStats:
        return self.acc.finish(self.functional.op_list)

    @property
    def params(self) -> list[nn.Parameter]:
        return self.inv.params

    @property
    def notes(self) -> list[str]:
        return self.hooks.notes


# ----------------------------------------------------------------------------------------------------------
# The check's passes
# ----------------------------------------------------------------------------------------------------------

@dataclass
class PassResult:
    stats: S.RunStats
    notes: list[str]
    loss_description: str


def run_passes(model: nn.Module, batches: Any, loss_fn: Any, *, steps: int, seed: int,
               device: torch.device, dist: Any = None) -> PassResult:
    """Run `steps` instrumented forward/backward passes; return statistics only (no tensors).

    Python's cyclic garbage collector is paused for the passes (and restored afterwards): the hooks
    create many small objects, and collections that rescan the whole model's objects made the cost per
    layer grow with depth (1.56x over plain passes at 1000 layers with it, 1.06x without).
    An exception leaving here has the locals of its finished frames cleared, so a caller that keeps it
    does not keep the pass's autograd graph (and activations) alive through its traceback.
    """
    with measuring():
        return _run_passes(model, batches, loss_fn, steps=steps, seed=seed, device=device, dist=dist)


@contextmanager
def measuring() -> Iterator[None]:
    """Around gradcheck's own passes or steps: the cyclic GC paused (restored after), and an exception
    leaving the block has its finished frames' locals cleared (release_frames)."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    except BaseException as exc:
        release_frames(exc)
        raise
    finally:
        if gc_was_enabled:
            gc.enable()


def release_frames(exc: BaseException) -> None:
    """Clear the locals of the finished frames in the tracebacks of exc and of its causes and contexts
    (tracebacks keep their file and line information, for printing)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            try:
                frame.clear()
            except RuntimeError:   # still executing (the caller's frames): left alone
                pass
            else:
                # A frame whose f_locals was read (module_at does) keeps that dict; reading it again
                # after clear() drops the cleared names from it.
                frame.f_locals  # noqa: B018
            tb = tb.tb_next
        todo += [e.__cause__, e.__context__, getattr(e, "original", None)]


def _run_passes(model: nn.Module, batches: Any, loss_fn: Any, *, steps: int, seed: int,
                device: torch.device, dist: Any = None) -> PassResult:
    """dist: a distributed.Driver under torchrun (its monitor reduces across ranks; it takes the
    gradients), else None."""
    state = model_state.snapshot(model)
    cuda = model_state.seeded_devices(model, device)
    mon: Monitor | None = None
    with model_state.forked_rng(cuda):
        try:
            if device is not None and state.device is not None and state.device != device:
                try:
                    model.to(device)
                except RuntimeError as exc:   # e.g. CUDA out of memory while copying the weights
                    raise InputError(f"cannot move the model to {device}: {exc_line(exc, 160)}",
                                     reason="device-move") from None
            try:
                model.train()
            except (Exception, SystemExit) as exc:   # a train() override of the user's
                raise UserCodeError(exc_line(exc), phase="build", where=f"{type(model).__name__}.train()",
                                    hint="gradcheck puts the model in training mode with model.train(); make "
                                         "that call work") from exc
            mon = (Monitor(model) if dist is None else dist.monitor(model)).attach()
            result = _check_passes(mon, model, batches, loss_fn, steps=steps, seed=seed, device=device,
                                   cuda=cuda, dist=dist)
        finally:
            if mon is not None:
                mon.detach()
            if dist is not None:
                dist.close()
            model_state.restore(model, state)
    result.notes.extend(state.notes)
    return result


def _check_passes(mon: Monitor, model: nn.Module, batches: Any, loss_fn: Any, *, steps: int, seed: int,
                  device: torch.device, cuda: list[int], dist: Any = None) -> PassResult:
    from gradcheck_cli import losses

    notes: list[str] = []
    loss_description = getattr(loss_fn, "description", "?")
    params = mon.params
    if not params:
        raise InputError("the model has no trainable parameters (every parameter has requires_grad=False)",
                         hint="unfreeze at least one layer; there is no gradient to check")
    # gradcheck never writes to parameters; a forward that does (weight clipping, max-norm
    # constraints in place) is detected through the tensors' version counters and reported.
    versions = [p._version for p in params]

    def one_pass(step: int, batch: Any, watch: bool) -> dict[str, Any] | None:
        """Forward, loss, gradients; folds the pass's statistics (one host transfer)."""
        nonlocal loss_description
        model_state.seed(seed * 1_000_003 + step, cuda)   # same dropout masks in a diagnosis re-run
        mon.begin_step()
        in_nf = [K.nonfinite_count(t) for t in batch.tensors() if t.is_floating_point()]
        if in_nf:
            mon.sink.add(None, "input_nf", torch.stack(in_nf).sum())
        set_phase("forward")
        try:
            with (mon.watch_functional() if watch else nullcontext()):
                output = model(*batch.args, **batch.kwargs)
        except (InputError, UserCodeError):
            raise
        except (Exception, SystemExit) as exc:   # the user's forward raised (or called sys.exit)
            raise user_error("forward", exc, mon, batch) from exc
        set_phase("loss")
        try:
            loss, loss_description, note = losses.compute(loss_fn, output, batch, step, seed)
        except (InputError, UserCodeError):
            raise
        except (Exception, SystemExit) as exc:
            raise user_error("loss", exc, mon, batch) from exc
        if note and note not in notes:
            notes.append(note)
        set_phase("backward")
        try:
            if dist is not None:   # the global loss's gradients (all-reduced, or FSDP's local shards)
                loss, grads = dist.gradients(loss, params, mon.hooks.extra_inputs)
            else:
                if reentrant_checkpoint[0] is None:
                    reentrant_checkpoint[0] = uses_reentrant_checkpoint(loss)
                grads = backward_grads(loss, list(params) + list(mon.hooks.extra_inputs), reentrant_checkpoint[0])
        except (Exception, SystemExit) as exc:
            raise user_error("backward", exc, mon, batch) from exc
        del output
        return mon.step(loss, grads[:len(params)])

    reentrant_checkpoint: list[bool | None] = [None]   # found on the first pass: the graph has the same kinds of nodes
    watch = True      # the function mode; dropped after step 1 when it found no functional activation
    diagnosed = False
    for step in range(steps):
        set_phase("batch")
        batch = batches.get(step, device)
        summary = one_pass(step, batch, watch)
        watch = mon.functional.found_any()
        if summary["nonfinite"] and not diagnosed:
            # Re-run this step (same batch, same seed) checking every layer output in forward order
            # and the ops that create NaN/Inf, to name where they start. Healthy runs never pay this.
            diagnosed = True
            mon.hooks.diagnose = True
            try:
                one_pass(step, batch, True)
            finally:
                mon.hooks.diagnose = False
    run = mon.finish()
    notes.extend(mon.notes)
    changed = [n for n, p, v in zip(mon.inv.param_names, params, versions) if p._version != v]
    if changed:
        notes.append(f"the model's own code modified {len(changed)} parameters in place during forward "
                     f"({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''}); gradcheck does not "
                     "undo changes made by the model's code to its parameters")
    return PassResult(stats=run, notes=notes, loss_description=loss_description)


def user_error(phase: str, exc: BaseException, mon: Monitor, batch: Any) -> UserCodeError:
    """The user's code raised: a one-line UserCodeError naming the module. The reason (timeout, out of
    memory, a shape mismatch) is set for the pipeline, which words the hint."""
    where = module_at(exc, mon.inv.module_names)
    msg = exc_line(exc)
    reason = detail = None
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None), MemoryError) if t is not None)
    if isinstance(exc, RunTimeout):
        msg, reason, detail = str(exc), "timeout", f"{exc.seconds:g}"
    elif isinstance(exc, oom_types) or re.search(r"out of memory|can't allocate memory|not enough memory",
                                                 exc_line(exc, 1000), re.I):
        msg, reason = f"out of memory ({type(exc).__name__})", "out-of-memory"
    elif phase == "forward" and isinstance(exc, RuntimeError) and ("shape" in str(exc) or "size" in str(exc)):
        reason, detail = "shape", batch.describe_shapes()
    return UserCodeError(msg, phase=phase, where=where, original=exc, reason=reason, detail=detail)


def uses_reentrant_checkpoint(loss: torch.Tensor) -> bool:
    """Whether the graph holds a reentrant torch.utils.checkpoint node (CheckpointFunctionBackward), which
    refuses torch.autograd.grad and supports only .backward()."""
    seen: set[int] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if "CheckpointFunction" in type(node).__name__:
            return True
        stack.extend(fn for fn, _ in getattr(node, "next_functions", ()))
    return False


def backward_grads(loss: torch.Tensor, tensors: list[torch.Tensor], reentrant: bool) -> tuple:
    """Gradients of the loss w.r.t. `tensors`, without touching the user's `.grad`: torch.autograd.grad, or,
    for reentrant gradient checkpointing (which supports only .backward()), .backward() with every `.grad`
    saved before and restored after."""
    if not reentrant:
        return torch.autograd.grad(loss, tensors, allow_unused=True)
    saved = [t.grad for t in tensors]
    for t in tensors:
        t.grad = None
    try:
        loss.backward()
        return tuple(t.grad for t in tensors)
    finally:
        for t, g in zip(tensors, saved):
            t.grad = g
