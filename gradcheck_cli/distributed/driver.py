"""What the measuring code asks of a run under torchrun (distributed.Driver): the monitor, one step's
gradients, and the model the training rehearsal trains.

- Strategy "ddp": gradients come from torch.autograd.grad and are averaged across ranks by one all-reduce
  per bucket, as DDP does.
- Strategy "fsdp": gradients come from loss.backward() (FSDP2's reduce-scatter averages them into sharded
  .grad), read from the local shards, and cleared.
- The statistics of each step are reduced in measure/distributed.py (DistMonitor), each with its own op.
- The training rehearsal (measure/training.py) trains a deep copy wrapped in DistributedDataParallel
  (ddp), or the FSDP2-sharded model itself, saved first and put back at the end (fsdp).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradcheck_cli.errors import InputError

if TYPE_CHECKING:
    from gradcheck_cli.distributed import Context
    from gradcheck_cli.distributed.rank_batches import RankBatches

GRAD_BUCKET = 1 << 24         # elements per gradient all-reduce


class Driver:
    """What run_passes asks of a distributed run: the monitor, and a step's gradients."""

    def __init__(self, ctx: Context, batches: RankBatches) -> None:
        self.ctx = ctx
        self.batches = batches

    def monitor(self, model: Any) -> Any:
        from gradcheck_cli.measure.distributed import DistMonitor

        self.mon = DistMonitor(model, grads="sharded" if self.ctx.strategy == "fsdp" else "replicated")
        return self.mon

    def describe(self) -> dict[str, Any]:
        """run.distributed: world_size, backend, strategy; with NaN/Inf, the rank that saw them first."""
        d = self.ctx.describe()
        onset = getattr(getattr(self, "mon", None), "onset_rank", None) or {}
        if any(v is not None for v in onset.values()):
            d["first_nonfinite_rank"] = dict(onset)
        return d

    def gradients(self, loss: Any, params: list, extra: list) -> tuple[Any, list]:
        """(the loss to record, the gradients of the global loss w.r.t. params: full tensors, or the
        local shards under FSDP)."""
        import torch

        from gradcheck_cli.measure.distributed import local

        loss = loss * self.batches.weight if self.batches.weight != 1.0 else loss
        if self.ctx.strategy == "fsdp":
            if not self.ctx.saved_grads:
                self.ctx.saved_grads = [(p, p.grad) for p in params]
                for p in params:
                    p.grad = None
            loss.backward()
            grads = [local(p.grad) if p.grad is not None else None for p in params]
            for p in params:
                p.grad = None
            return loss, grads
        grads = list(torch.autograd.grad(loss, list(params) + list(extra), allow_unused=True))[:len(params)]
        self.all_reduce_mean([g for g in grads if g is not None])
        return loss, grads

    def all_reduce_mean(self, grads: list) -> None:
        import torch
        import torch.distributed as dist

        n = self.ctx.world_size
        bucket: list = []
        size = 0

        def flush() -> None:
            nonlocal bucket, size
            if not bucket:
                return
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            flat.div_(n)
            pos = 0
            for g in bucket:
                g.copy_(flat[pos:pos + g.numel()].view_as(g))
                pos += g.numel()
            bucket, size = [], 0

        for g in grads:
            if bucket and (g.dtype != bucket[0].dtype or g.device != bucket[0].device or size + g.numel() > GRAD_BUCKET):
                flush()
            bucket.append(g)
            size += g.numel()
        flush()

    # -- the training rehearsal (measure/training.py calls these) ------------------------------------------

    def training_model(self, model: Any, unused: bool = False) -> tuple[Any, Any, Any]:
        """(the module the rehearsal trains and measures, what its forward is called on, a function that
        ends the rehearsal). ddp: a deep copy of the model wrapped in DistributedDataParallel (its
        backward all-reduces the gradients, so the optimizer steps are DDP's); `unused` (the check saw
        trainable parameters without a gradient): find_unused_parameters. fsdp: FSDP2 modules cannot
        be deep-copied, so the sharded model itself trains: its local shards, persistent buffers and
        .grad are saved first (1/N of the parameters per rank) and put back at the end."""
        import copy

        import torch
        from torch.nn.parallel import DistributedDataParallel

        from gradcheck_cli.measure import model_state
        from gradcheck_cli.measure.distributed import local

        if self.ctx.strategy == "fsdp":
            params = list(model.parameters())
            with torch.no_grad():
                saved = [local(p.detach()).clone() for p in params]
            grads = [p.grad for p in params]
            state = model_state.snapshot(model)

            def done() -> None:
                with torch.no_grad():
                    for p, v in zip(params, saved):
                        local(p.detach()).copy_(v)
                for p, g in zip(params, grads):
                    p.grad = g
                model_state.restore(model, state)
            return model, model, done
        try:
            net = copy.deepcopy(model)
        except Exception as exc:
            raise InputError("the training rehearsal trains a deep copy of the model (the model is left untouched), "
                             f"and copy.deepcopy failed: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}",
                             hint="make the model deep-copyable, or run without the training rehearsal") from None
        if self.ctx.device is not None:
            net.to(self.ctx.device)
        wrapped = DistributedDataParallel(net, device_ids=[self.ctx.device.index] if self.ctx.device is not None
                                          else None, find_unused_parameters=unused)
        return net, wrapped, lambda: None

    def training_monitor(self, net: Any) -> Any:
        """The rehearsal's monitor: each step's record reduced across ranks (measure.distributed)."""
        from gradcheck_cli.measure.distributed import DistMonitor

        self.train_mon = DistMonitor(net, grads="sharded" if self.ctx.strategy == "fsdp" else "replicated")
        return self.train_mon

    def close(self) -> None:
        for p, g in self.ctx.saved_grads:
            p.grad = g
        self.ctx.saved_grads = []
