"""Each rank's part of the global batch under torchrun.

Each rank takes its contiguous slice of the global batch along the first dimension (a batch callable with
`rank` and `world_size` keyword arguments is called with them instead). Rank r's loss is weighted by
n_r * N / B so that the mean of the ranks' losses is the global batch's mean loss, also for slices of
unequal size.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any

from gradcheck_cli.errors import InputError

if TYPE_CHECKING:
    from gradcheck_cli.distributed import Context


def accepts_rank(obj: Any) -> bool:
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False
    return "rank" in params and "world_size" in params


class RankBatches:
    """Each rank's part of the global batch: a contiguous slice along the first dimension of every
    tensor whose first dimension is the batch size (torch.tensor_split sizes), or what a batch callable
    accepting rank/world_size returns. `weight` (set per step): n_r * N / B for the rank's loss."""

    def __init__(self, source: Any, ctx: Context) -> None:
        self.source = source
        self.ctx = ctx
        self.weight = 1.0
        self.global_size: int | None = None
        self.sharded_by_user = False
        obj = getattr(source, "obj", None)
        if obj is not None and callable(obj) and getattr(source, "_iter", None) is None and accepts_rank(obj):
            source.obj = functools.partial(obj, rank=ctx.rank, world_size=ctx.world_size)
            self.sharded_by_user = True
        self.description = source.description + (
            f" (each of {ctx.world_size} ranks calls it with rank, world_size)" if self.sharded_by_user
            else f" (global batch; a contiguous slice on each of {ctx.world_size} ranks)")
        self.shape = getattr(source, "shape", None)

    def get(self, step: int, device: Any) -> Any:
        import torch
        import torch.distributed as dist

        from gradcheck_cli.batches import Batch, map_tensors

        batch = self.source.get(step, device)
        first = next(batch.tensors(), None)
        if first is None or first.dim() == 0:
            raise InputError("a distributed check needs a batch dimension: the batch holds no tensor with one")
        if self.sharded_by_user:
            sizes = torch.zeros(self.ctx.world_size, dtype=torch.float64, device=self.ctx.device or "cpu")
            sizes[self.ctx.rank] = first.shape[0]
            dist.all_reduce(sizes)
            total = float(sizes.sum().item())
            self.weight = first.shape[0] * self.ctx.world_size / total
            self.global_size = int(total)
            lo = int(sizes[:self.ctx.rank].sum().item())
            # synthetic targets: rows lo:hi of the global batch's (the ranks' parts taken in rank order)
            batch.part = (lo, lo + first.shape[0], int(total))   # type: ignore[attr-defined]
            return batch
        b = first.shape[0]
        if b < self.ctx.world_size:
            raise InputError(f"the global batch has {b} examples, fewer than the {self.ctx.world_size} ranks",
                             hint="use a batch of at least one example per rank (--input-shape or --batch)")
        n = self.ctx.world_size
        lo = self.ctx.rank * (b // n) + min(self.ctx.rank, b % n)
        hi = lo + b // n + (1 if self.ctx.rank < b % n else 0)
        self.weight = (hi - lo) * n / b
        self.global_size = b

        def cut(obj: Any) -> Any:
            return map_tensors(obj, lambda t: t[lo:hi] if t.dim() >= 1 and t.shape[0] == b else t)

        part = Batch(args=cut(batch.args), kwargs=cut(batch.kwargs), target=cut(batch.target),
                     token_input=batch.token_input)
        part.part = (lo, hi, b)   # type: ignore[attr-defined]  (losses.synth_target: the global targets' rows)
        return part
