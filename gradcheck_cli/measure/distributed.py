"""Statistics across the ranks of a torch.distributed run: each per-step record reduced with its keys'
own ops, so that every rank folds the same global record and reaches the same report.

What N ranks measure, and how it becomes what one process measures on the global batch (the ranks'
losses are means over their slices, and the global loss is their mean, as under DDP and FSDP):
- parameter gradients are averaged across ranks by the backward itself (DDP, FSDP2's reduce-scatter,
  or gradcheck's own all-reduce for a plain model), so they are the global gradients already:
  `replicated` (every rank holds all of them): rank 0's sums of squares are taken as they are;
  `sharded` (FSDP2: each rank holds a shard, a DTensor's local tensor): the shards' sums add up, so
  per-layer norms of sharded parameters are exact. The training rehearsal's per-parameter sums of
  squares of the update and of the weight before the optimizer step (keys "pupd", "pweight") are
  treated the same way (PARAM_KEYS);
- dLoss/dOutput (key "g") and the recurrent per-time-step profiles are local: rank r's slice of the
  global activation gradient is 1/N of its local one, so their sums of squares add up over ranks and are
  divided by N**2;
- the loss is summed and divided by N (the mean of the ranks' losses), and so are the forward calls of
  a layer (every rank runs the same forward once per step);
- counts (saturated outputs and the outputs seen) add up; NaN/Inf flags by max; "dead" (units not yet seen above 0) by
  min, and the per-unit masks at the end by max: a unit is dead only if it is dead on every rank;
- the first NaN/Inf (forward and backward order) is the earliest over ranks; which rank saw it first is
  kept in `onset_rank`.

`reduce_record` is the one cross-rank reduction of a StepRecord, and `DistMonitor` the Monitor whose
steps and finish go through it: the torchrun check (distributed.Driver) and watch()/the framework
callbacks in a user's DDP or FSDP2 loop (measure/monitor.TrainingMonitor) both use it.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch
import torch.nn as nn

from gradcheck_cli import stats as S
from gradcheck_cli.errors import UserCodeError
from gradcheck_cli.measure import kernels as K
from gradcheck_cli.measure.passes import Monitor
from gradcheck_cli.measure.record import KEYS, Reduce, StepRecord

_OPS = {Reduce.SUM: "SUM", Reduce.MAX: "MAX", Reduce.MIN: "MIN", Reduce.ANY: "MAX"}
LOCAL_GRAD_KEYS = ("g",)   # gradients of the rank's own loss (not averaged by the backward)
PER_RANK_MEAN_KEYS = ("loss", "calls")   # summed, then divided by N: the mean loss, calls per forward
# per-parameter sums of squares: replicated (DDP) -> rank 0's, sharded (FSDP2) -> the shards' sums added
PARAM_KEYS = ("pgrad", "pupd", "pweight")


class LayoutMismatch(UserCodeError):
    """The ranks measured different things in one step (their forwards took different paths)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, phase="backward",
                         hint="the ranks must run the same layers and ops on every step; check the model's "
                              "rank- or data-dependent branches")


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2 parameters and gradients); any other tensor as it is."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) and type(t).__name__ == "DTensor" else t


def grads_layout(model: nn.Module) -> str:
    """"sharded" when the model's parameters are FSDP2 DTensor shards (each rank holds a part of every
    gradient), else "replicated" (DDP: after its all-reduce every rank holds the same gradients)."""
    return "sharded" if any(type(p).__name__ == "DTensor" for p in model.parameters()) else "replicated"


def _device(group: Any) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_layout(record: StepRecord, group: Any = None) -> None:
    """Every rank must hold the same entries in the same order (one collective)."""
    import torch.distributed as dist

    sig = zlib.crc32(repr(record.layout()).encode()) & 0xFFFFFF
    t = torch.tensor([len(record.values), sig, -len(record.values), -sig], dtype=torch.float64,
                     device=_device(group))
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    if t[0].item() != -t[2].item() or t[1].item() != -t[3].item():
        raise LayoutMismatch("the ranks measured different layers in one step (the model's forward took "
                             "different paths on different ranks)")


def reduce_record(record: StepRecord, group: Any = None, *, grads: str = "replicated",
                  check: bool = True) -> StepRecord:
    """The global record of one step, on every rank: each value all-reduced with its key's op (one
    collective per op), then normalised as the module docstring says. grads: "replicated" (DDP, plain
    data parallel: parameter gradients equal on every rank) or "sharded" (FSDP2)."""
    import torch.distributed as dist

    n = dist.get_world_size(group)
    if n == 1:
        return record
    if check:
        check_layout(record, group)
    rank = dist.get_rank(group)
    values = list(record.values)
    if grads == "replicated" and rank != 0:   # equal on every rank: take rank 0's
        for slot, key, off, length, _ in record.entries:
            if key in PARAM_KEYS:
                values[off:off + length] = [0.0] * length
    dev = _device(group)
    out = list(values)
    for op, positions in record.positions_by_op().items():
        if not positions:
            continue
        t = torch.tensor([values[i] for i in positions], dtype=torch.float64, device=dev)
        if op is Reduce.ANY:
            t = (t != 0).to(torch.float64)
        dist.all_reduce(t, op=getattr(dist.ReduceOp, _OPS[op]), group=group)
        for i, v in zip(positions, t.cpu().tolist()):
            out[i] = v
    inv_n2 = 1.0 / (n * n)
    for slot, key, off, length, _ in record.entries:
        if key in LOCAL_GRAD_KEYS:
            out[off:off + length] = [v * inv_n2 for v in out[off:off + length]]
        elif key in PER_RANK_MEAN_KEYS:
            out[off:off + length] = [v / n for v in out[off:off + length]]
    return StepRecord(entries=list(record.entries), values=out)


def first_onset_rank(record: StepRecord, group: Any = None) -> dict[str, int | None]:
    """In a diagnosis record (before reduction): which rank saw the first NaN/Inf, forward and backward
    (the earliest event order, the lowest rank on a tie). One collective."""
    import torch.distributed as dist

    n, rank = dist.get_world_size(group), dist.get_rank(group)
    big = float(2 ** 40)
    fwd = bwd = big
    for slot, key, vals, seq in record.items():
        if slot is None or (isinstance(slot, tuple) and slot[0] == "params") or not vals or vals[0] <= 0:
            continue
        if key in ("out", "op"):
            fwd = min(fwd, seq)
        elif key in ("g", "opg"):
            bwd = min(bwd, seq)
    t = torch.full((2, n), big, dtype=torch.float64, device=_device(group))
    t[0, rank], t[1, rank] = fwd, bwd
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
    out: dict[str, int | None] = {}
    for i, name in enumerate(("forward", "backward")):
        row = t[i].tolist()
        lo = min(row)
        out[name] = row.index(lo) if lo < big else None
    return out


class DistMonitor(Monitor):
    """A Monitor whose records are reduced across the ranks before they are folded, so every rank holds
    the global statistics; weight statistics of sharded (DTensor) parameters from their local shards."""

    def __init__(self, model: nn.Module, group: Any = None, grads: str = "replicated") -> None:
        super().__init__(model)
        self.group = group
        self.grads = grads
        self.onset_rank: dict[str, int | None] = {"forward": None, "backward": None}

    def weight_stats(self, inv: Any) -> None:   # type: ignore[override]
        if any(type(p).__name__ == "DTensor" for p in inv.model.parameters()):
            sharded_weight_stats(inv, self.group)
        else:
            super().weight_stats(inv)

    def step(self, loss: Any = None, grads: Any = None, **kw: Any) -> Any:   # type: ignore[override]
        """As Monitor.step; reading `.grad` itself (a training loop), FSDP2's DTensor gradients are read
        from their local shards (reduce_record adds the shards' sums of squares up)."""
        if grads is None:
            grads = [None if p.grad is None else local(p.grad) for p in self.params]
        return super().step(loss, grads, **kw)

    def reduce(self, record: StepRecord) -> StepRecord:
        if self.hooks.diagnose:
            found = first_onset_rank(record, self.group)
            for k, v in found.items():
                if v is not None and self.onset_rank.get(k) is None:
                    self.onset_rank[k] = v
        return reduce_record(record, self.group, grads=self.grads)

    def reduce_vectors(self, vectors: list[tuple[str, torch.Tensor]]) -> list[torch.Tensor]:
        """End of run: per-unit maxima of the ReLU pre-activations ("alive") by max (off and dead only if
        so on every rank: the margin is the max of the per-rank maxima), their moments (per-unit sums,
        sum of squares, count) summed, recurrent per-time-step squared gradients summed and divided by N**2."""
        import torch.distributed as dist

        n = dist.get_world_size(self.group)
        dev = _device(self.group)
        out = []
        for what, v in vectors:
            t = v.to(dev, torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX if what == "alive" else dist.ReduceOp.SUM, group=self.group)
            out.append((t / (n * n) if what == "time" else t).to(v.device, torch.float32))
        return out


def sharded_weight_stats(inv: Any, group: Any = None) -> None:
    """weights.weight_stats for a model whose parameters are DTensor shards (FSDP2): sums of squares,
    sums and counts from the local shards, added up across ranks (one collective); shapes are global."""
    import torch.distributed as dist

    parts: list[torch.Tensor] = []
    jobs: list[tuple[S.LayerStats, str, int, int]] = []   # (stats, what, index of the first part, numel)
    with torch.no_grad():
        for layer in inv.layers:
            mod = layer.module
            if mod is None or layer.stats.role != S.PARAM:
                continue
            own = [inv.params[i] for i in layer.owned]
            if own:
                jobs.append((layer.stats, "norm", len(parts), 0))
                parts.append(sum((K.sumsq(local(p.detach())).double() for p in own), torch.zeros((), dtype=torch.float64)))
            w = getattr(mod, "weight", None)
            if isinstance(w, torch.Tensor) and w.dim() >= 2 and w.is_floating_point() and w.numel():
                shape = tuple(w.shape)
                rf = math.prod(shape[2:]) if len(shape) > 2 else 1
                layer.stats.fan_in, layer.stats.fan_out = int(shape[1] * rf), int(shape[0] * rf)
                jobs.append((layer.stats, "weight_rms", len(parts), w.numel()))
                parts.append(K.sumsq(local(w.detach())).double())
            b = getattr(mod, "bias", None)
            if isinstance(b, torch.Tensor) and b.numel() and b.is_floating_point():
                jobs.append((layer.stats, "bias_mean", len(parts), b.numel()))
                parts.append(local(b.detach()).double().sum())
        if not parts:
            return
        t = torch.stack([p.to(_device(group)) for p in parts])
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        flat = t.cpu().tolist()
    for st, what, i, numel in jobs:
        if what == "norm":
            st.weight_norm = math.sqrt(max(flat[i], 0.0))
        elif what == "weight_rms":
            st.weight_rms = math.sqrt(max(flat[i], 0.0) / numel)
        else:
            st.bias_mean = flat[i] / numel


__all__ = ["DistMonitor", "LayoutMismatch", "reduce_record", "grads_layout", "first_onset_rank", "check_layout", "local",
           "sharded_weight_stats", "KEYS"]
