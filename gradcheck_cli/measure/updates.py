"""The training rehearsal's update norms: |w_after - w_before| / |w| per layer and step.

Around each optimizer step the parameters are copied once (foreach) into one buffer kept for the whole
run; the squared norms of each parameter's update and weight stay on the device and come back in one
transfer at the end. Under torchrun the per-parameter sums of squares go through the same reduce_record
as a step's record (keys pupd/pweight: DDP's replicated parameters counted once, FSDP2 shards added).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gradcheck_cli.measure.distributed import local


class UpdateNorms:
    """Per step: (2, n_params) squared norms of each parameter's update and weight, on the device."""

    def __init__(self, params: list) -> None:
        self.params = params
        self.sq: list[torch.Tensor] = []
        self.before: list[torch.Tensor] | None = None   # the weights before a step, then the step's update

    def before_step(self) -> None:
        # The weights before the step, into one buffer kept for the whole run (a fresh copy per step
        # made the allocator map and fault in the model's size every step).
        current = [local(p.detach()) for p in self.params]
        if self.before is None:
            self.before = [torch.empty_like(c) for c in current]
        torch._foreach_copy_(self.before, current)

    def after_step(self) -> None:
        before = self.before
        assert before is not None
        w_sq = torch.stack([n * n for n in torch._foreach_norm(before)]).to(torch.float32)
        torch._foreach_sub_(before, [local(p.detach()) for p in self.params])
        u_sq = torch.stack([n * n for n in torch._foreach_norm(before)]).to(torch.float32)
        self.sq.append(torch.stack([u_sq, w_sq]))

    def ratios(self, layers: list, mon: Any = None) -> tuple[dict[str, list[float | None]], set[int], int | None]:
        """(per layer owning parameters: |update| / |weight| per step, the parameters whose update was
        non-finite, the first step with one). One transfer; mon: a DistMonitor under torchrun (one
        reduction, reduce_record with keys pupd/pweight)."""
        out: dict[str, list[float | None]] = {}
        nonfinite_params: set[int] = set()
        weight_bad_step = None
        if not self.sq:
            return out, nonfinite_params, weight_bad_step
        flat = torch.stack(self.sq).cpu().tolist()      # (steps, 2, n_params)
        if mon is not None:
            flat = _reduce_updates(flat, mon)
        for layer in layers:
            if not layer.owned:
                continue
            rs: list[float | None] = []
            for t, (u, w) in enumerate(flat):
                uu = sum(u[i] for i in layer.owned)
                ww = sum(w[i] for i in layer.owned)
                if not math.isfinite(uu):
                    nonfinite_params |= {i for i in layer.owned if not math.isfinite(u[i])}
                    weight_bad_step = t if weight_bad_step is None else min(weight_bad_step, t)
                rs.append(math.sqrt(uu / ww) if ww > 0 else None)
            out[layer.name] = rs
        return out, nonfinite_params, weight_bad_step


def _reduce_updates(flat: list, mon: Any) -> list:
    """Under torchrun: the per-parameter sums of squares of every step's update and weight, reduced
    across ranks by measure.distributed.reduce_record (sharded FSDP2 parameters: the shards' sums added;
    DDP's replicated parameters: rank 0's), in one record for the whole run."""
    from gradcheck_cli.measure.distributed import reduce_record
    from gradcheck_cli.measure.record import StepRecord

    entries, values = [], []
    for t, (u, w) in enumerate(flat):
        for key, vals in (("pupd", u), ("pweight", w)):
            entries.append((("update", t), key, len(values), len(vals), 0))
            values.extend(vals)
    rec = reduce_record(StepRecord(entries=entries, values=values), mon.group, grads=mon.grads)
    out = []
    for t, (u, _) in enumerate(flat):
        n = len(u)
        uu = rec.get(("update", t), "pupd") or []
        ww = rec.get(("update", t), "pweight") or []
        assert len(uu) == len(ww) == n
        out.append((uu, ww))
    return out
