"""The measuring core inside a user's training loop: hooks only on the measured steps.

`TrainingMonitor` wraps `passes.Monitor`. Step 0 is measured, then every `every`-th step, plus the step
after a loss turns non-finite (measured in diagnosis mode the first time, to name where NaN/Inf start).
The hooks are installed before a measured step's forward (at the end of the step before it, or at
construction for step 0) and removed when that step is closed, so between measured steps the model runs
with no hook of ours. `step(loss)` is called after the user's backward and before the optimizer step:
it reads `p.grad` (final, and unscaled when `grads_unscaled` or `grad_scale` says how).

Every step costs one host read of the loss (to see a NaN/Inf between measured steps); a measured step
costs what a check's pass costs, plus one transfer. Under torch.distributed (DDP), a measured step's
record is all-reduced with each key's reduce op (record.KEYS) and rescaled so that the statistics are
those of the global batch; the per-step loss check is one all-reduce of one number.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from gradcheck_cli import stats as S
from gradcheck_cli.measure.accumulate import moments_vector
from gradcheck_cli.measure.passes import Monitor
from gradcheck_cli.measure.record import KEYS, Reduce, StepRecord

# Under DDP every rank's parameter gradients are already the average over ranks (equal on every rank),
# each rank's loss is the mean over its own shard, and dLoss/dOutput of the global loss is 1/W of the
# rank's own. After a SUM all-reduce these factors give the values of one process on the whole batch.
_DDP_SCALE_POWER = {"pgrad": 1, "loss": 1, "calls": 1, "g": 2}


class Ranks:
    """torch.distributed, when initialised with more than one rank; otherwise a single process."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.world = self.dist.get_world_size() if self.dist else 1
        self.rank = self.dist.get_rank() if self.dist else 0
        self.device = torch.device("cpu")
        if self.dist is not None and self.dist.get_backend() == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())

    @property
    def active(self) -> bool:
        return self.world > 1

    def sum_scalar(self, value: torch.Tensor) -> float:
        t = value.detach().reshape(1).to(self.device, torch.float64)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM)
        return float(t.item())

    def same_everywhere(self, obj: Any) -> bool:
        objs: list[Any] = [None] * self.world
        self.dist.all_gather_object(objs, obj)
        return all(o == objs[0] for o in objs)

    def reduce_record(self, record: StepRecord) -> StepRecord:
        """All-reduce a step's values position by position with each key's op, then rescale (DDP)."""
        layout = [(repr(slot), key, n) for slot, key, n in record.layout()]
        if not self.same_everywhere(layout):
            raise RuntimeError("gradcheck: the ranks measured different layers in this step; "
                               "their statistics cannot be combined")
        values = torch.tensor(record.values, dtype=torch.float64, device=self.device)
        ops = {Reduce.SUM: self.dist.ReduceOp.SUM, Reduce.MAX: self.dist.ReduceOp.MAX,
               Reduce.MIN: self.dist.ReduceOp.MIN, Reduce.ANY: self.dist.ReduceOp.MAX}
        for op, positions in sorted(record.positions_by_op().items()):
            idx = torch.tensor(positions, dtype=torch.long, device=self.device)
            part = values.index_select(0, idx)
            self.dist.all_reduce(part, op=ops[op])
            values.index_copy_(0, idx, part)
        out = values.cpu().tolist()
        for slot, key, off, n, _ in record.entries:
            power = _DDP_SCALE_POWER.get(key)
            if power and KEYS[key].reduce is Reduce.SUM:
                for i in range(off, off + n):
                    out[i] /= self.world ** power
        return StepRecord(entries=list(record.entries), values=out)

    def reduce_tensor_max(self, t: torch.Tensor) -> torch.Tensor:
        r = t.detach().to(self.device, torch.float32).clone()
        self.dist.all_reduce(r, op=self.dist.ReduceOp.MAX)
        return r.to(t.device, t.dtype)


class TrainingMonitor:
    """Decides which steps are measured, attaches the hooks for them only, folds their records."""

    def __init__(self, model: nn.Module, every: int = 50, distributed: bool | None = None,
                 lazy: bool = False) -> None:
        """lazy: the hooks of a measured step are installed by `begin_step()` (a framework's batch-start
        callback) rather than when the step before it closes, so nothing runs hooked in between
        (validation loops, checkpointing)."""
        self.model = model
        self.every = max(int(every), 1)
        self.ranks = Ranks() if distributed is not False else None
        if self.ranks is not None and not self.ranks.active:
            self.ranks = None
        self.mon = Monitor(model).attach()   # inventory, weight statistics, hooks for step 0
        self.mon.hooks.record_inputs = False  # never make the user's inputs require grad
        if self.ranks is not None:
            self.mon.reduce_record = self.ranks.reduce_record
        self.hooked = True
        self.closed = False
        self.step_index = 0                  # the step the next call to step() closes
        self.measured_steps: list[int] = []  # steps whose statistics were folded (in order)
        self.losses: list[float] = []        # every step's loss (NaN when none was given)
        self._diagnose_next = False
        self.extra_loss_steps: list[int] = []   # unmeasured steps whose loss was non-finite
        self.diagnosed = False
        self.last_summary: dict[str, Any] | None = None
        self._prev_finite = True
        self.lazy = lazy
        self._want = True                    # whether step `step_index` is to be measured
        if lazy:
            self._set_hooks(False)

    # -- schedule ---------------------------------------------------------------------------------------------

    def is_measured(self, step: int) -> bool:
        return step % self.every == 0

    def _set_hooks(self, on: bool) -> None:
        if on and not self.hooked:
            self.mon.hooks.install()
            self.mon.hooks.begin_pass()
            self.hooked = True
        elif not on and self.hooked:
            self.mon.hooks.remove()
            self.mon.sink.clear()
            self.hooked = False

    @property
    def will_measure(self) -> bool:
        """Whether the coming step (step_index) is measured."""
        return self._want

    def begin_step(self) -> None:
        """Before the coming step's first forward: install the hooks if it is measured (idempotent)."""
        if self.closed or not self._want or self.hooked:
            return
        self._set_hooks(True)
        if self._diagnose_next:
            self.mon.hooks.diagnose = True   # exact NaN/Inf flags, forward and backward order
            self.diagnosed = True

    # -- one step ---------------------------------------------------------------------------------------------

    def read_loss(self, loss: Any) -> float:
        """The step's loss as a float (mean over ranks under DDP); NaN when no loss was given."""
        if loss is None:
            return math.nan
        t = loss if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
        if t.numel() != 1:
            t = t.detach().float().mean()
        if self.ranks is not None:
            return self.ranks.sum_scalar(t) / self.ranks.world
        return float(t.detach())

    def step(self, loss: Any = None, *, grad_scale: Any = 1.0, grads_unscaled: bool = False,
             measure: bool | None = None) -> dict[str, Any]:
        """Close step `step_index`. Returns {step, measured, diagnosis, loss, nonfinite, summary}."""
        if self.closed:
            raise RuntimeError("this monitor was closed")
        step = self.step_index
        value = self.read_loss(loss)
        finite = math.isfinite(value) or loss is None
        self.losses.append(value)
        measured = self.hooked
        diagnosis = measured and self.mon.hooks.diagnose
        summary = None
        if measured:
            loss_t = None
            if loss is not None:
                loss_t = loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
                if loss_t.numel() != 1:
                    loss_t = loss_t.float().mean()
            summary = self.mon.step(loss_t, grad_scale=grad_scale, grads_unscaled=grads_unscaled)
            if not diagnosis:
                self.measured_steps.append(step)
                self.last_summary = summary
            self.mon.hooks.diagnose = False
        elif not finite:
            self.extra_loss_steps.append(step)
        nonfinite = (not finite) or bool(summary and summary.get("nonfinite"))
        # The next step: measured on schedule, or right after a loss (or gradient) turned non-finite.
        nxt = step + 1
        new_trouble = nonfinite and self._prev_finite
        self._prev_finite = not nonfinite
        want = self.is_measured(nxt) or new_trouble if measure is None else measure
        self._want = bool(want)
        self._diagnose_next = new_trouble and not self.diagnosed
        self.step_index = nxt
        self._set_hooks(False)
        if not self.lazy:
            self.begin_step()
        return {"step": step, "measured": measured, "diagnosis": diagnosis, "loss": value,
                "nonfinite": nonfinite, "summary": summary}

    # -- the run ----------------------------------------------------------------------------------------------

    def stats(self) -> S.RunStats:
        """RunStats over the measured steps; `losses` also carries the non-finite losses of unmeasured
        steps (so NaN/Inf between measured steps is reported) and `steps` counts every step seen."""
        if self.ranks is not None:
            self._reduce_masks()
        st = self.mon.finish()
        keep = sorted(set(self.measured_steps) | set(self.extra_loss_steps))
        st.losses = [self.losses[i] for i in keep]
        st.steps = self.step_index
        return st

    def _reduce_masks(self) -> None:
        """Per-unit running maxima (dead ReLUs) of every rank: a unit that fired on any rank is alive."""
        layers = [layer for layer in self.mon.inv.layers if layer.alive is not None]
        shapes = [(layer.slot, tuple(layer.alive.shape), moments_vector(layer) is not None) for layer in layers]
        if not self.ranks.same_everywhere(shapes):
            return
        for layer in layers:
            layer.alive = self.ranks.reduce_tensor_max(layer.alive)
            if layer.pre_moments is not None and not layer.pre_blind:   # margins: moments add up over ranks
                mom, n = layer.pre_moments
                t = mom.to(self.ranks.device, torch.float64, copy=True)
                self.ranks.dist.all_reduce(t, op=self.ranks.dist.ReduceOp.SUM)
                layer.pre_moments = [t.to(mom.device), round(self.ranks.sum_scalar(torch.tensor(float(n))))]

    def metrics(self, prefix: str = "gradcheck/") -> dict[str, float]:
        """The last measured step's global and per-layer parameter-gradient norms, for a framework logger."""
        out: dict[str, float] = {}
        s = self.last_summary
        if not s:
            return out
        out[f"{prefix}grad_norm"] = float(s["total_grad_norm"])
        acc = self.mon.acc
        n = len(self.measured_steps)
        for layer in self.mon.inv.layers:
            vals = acc.layer_pgrad_norms.get(layer.slot)
            if vals and len(vals) == n:
                out[f"{prefix}grad_norm/{layer.name or '(model)'}"] = float(vals[-1])
        return out

    @property
    def notes(self) -> list[str]:
        return self.mon.notes

    def close(self) -> None:
        if not self.closed:
            self._set_hooks(False)
            self.mon.detach()
            self.closed = True
