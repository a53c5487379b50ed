"""gradcheck under torchrun: the process group, the batch slice of each rank, the model's strategy
(data parallel or FSDP2), the gradients of a step, and agreement between ranks.

    torchrun --nproc-per-node N -m gradcheck_cli check MODEL [--batch SPEC] [--fsdp]

- The process group is initialised here when the model's code has not done it (gloo on the CPU, NCCL
  on CUDA with LOCAL_RANK as the device), with a timeout, and torn down at the end.
- Each rank takes its contiguous slice of the global batch along the first dimension (a batch callable
  with `rank` and `world_size` keyword arguments is called with them instead). Rank r's loss is weighted
  by n_r * N / B so that the mean of the ranks' losses is the global batch's mean loss, also for slices
  of unequal size.
- Strategy "ddp": a plain model (or one wrapped in DistributedDataParallel, measured through its
  `.module`, so names carry no `module.` prefix) runs on every rank; gradients come from
  torch.autograd.grad and are averaged across ranks by one all-reduce per bucket, as DDP does.
  Strategy "fsdp": `--fsdp` shards the model with FSDP2 `fully_shard` (`shard`: every child of an
  nn.ModuleList (the repeated blocks), every large untied leaf outside them (embeddings, LM head), and the
  root); a model already sharded with FSDP2 is used as it is.
  Gradients come from loss.backward() (FSDP2's reduce-scatter averages them into sharded .grad),
  read from the local shards, and cleared.
- The statistics of each step are reduced in measure/distributed.py, each with its own op.
- Errors: at points every rank reaches (after building the model, at the end), the ranks agree on the
  outcome (`agree`); an error inside the passes, where the other ranks may be waiting in a collective,
  ends that rank at once with exit 3 (`fatal`), and the others follow with exit 3: the collective they
  wait in fails when the rank's connections close, or torchrun's SIGTERM arrives (handled: exit 3).
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from gradcheck_cli.errors import GradcheckError, InputError, UserCodeError

DEFAULT_TIMEOUT_S = 1800.0    # process-group timeout without --timeout
TIMEOUT_GRACE_S = 30.0        # with --timeout: the process group waits this much longer
GRAD_BUCKET = 1 << 24         # elements per gradient all-reduce


def requested(fsdp: bool = False) -> bool:
    """Launched by torchrun (or another launcher setting WORLD_SIZE) with more than one rank, or with
    one rank and --fsdp (which still exercises the sharded path)."""
    try:
        n = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return False
    return n > 1 or (fsdp and "RANK" in os.environ)


class PeerFailed(GradcheckError):
    """Another rank failed: this rank ends with the same code, printing nothing (that rank printed it)."""

    def __init__(self, rank: int, info: dict[str, Any]):
        super().__init__(f"rank {rank}: {info.get('message')}")
        self.exit_code = int(info.get("exit_code", 3))
        self.info = dict(info, message=f"rank {rank}: {info.get('message')}")


@dataclass
class Context:
    rank: int
    world_size: int
    local_rank: int
    backend: str
    fsdp: bool
    owns_group: bool
    strategy: str = "ddp"
    device: Any = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    saved_grads: list = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend, "strategy": self.strategy}


_current: Context | None = None


def current() -> Context | None:
    return _current


def start(fsdp: bool, device: str | None, timeout: float | None) -> Context:
    """Join (or create) the process group. gloo on the CPU, NCCL with LOCAL_RANK on CUDA."""
    global _current
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    timeout_s = (timeout + TIMEOUT_GRACE_S) if timeout else DEFAULT_TIMEOUT_S
    owns = False
    if dist.is_initialized():
        backend = str(dist.get_backend())
    else:
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if device == "cuda" and not torch.cuda.is_available():
            raise InputError("--device cuda was asked for but CUDA is not available on this machine",
                             hint="use --device cpu or --device auto")
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        except Exception as exc:   # noqa: BLE001 - a launcher environment that does not work
            raise InputError(f"cannot initialise the process group ({backend}): {str(exc).splitlines()[0][:200]}",
                             hint="launch with torchrun --nproc-per-node N -m gradcheck_cli check ...") from None
        owns = True
    ctx = Context(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                  backend=backend, fsdp=fsdp, owns_group=owns, timeout_s=timeout_s,
                  strategy="fsdp" if fsdp else "ddp")
    if backend == "nccl":
        ctx.device = torch.device("cuda", local_rank)
    _current = ctx
    # torchrun ends the other ranks with SIGTERM when one fails: they exit with the same code, 3 (rank 0
    # first writes the error report, `on_terminated`, so that a CI gate reading --output finds one).
    if threading_main():
        signal.signal(signal.SIGTERM, _terminated)
    return ctx


on_terminated: Any = None   # set by the CLI around a model's check: writes rank 0's error report


def _terminated(*_: Any) -> None:
    try:
        if on_terminated is not None:
            on_terminated()
    finally:
        os._exit(3)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def finish(ctx: Context | None) -> None:
    """Tear the process group down (only one gradcheck created)."""
    global _current
    _current = None
    if ctx is None or not ctx.owns_group:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:   # noqa: BLE001 - best effort at exit
            pass


def fatal(exc: BaseException, ctx: Context, message: str, code: int = 3) -> None:
    """This rank failed where the others may be waiting in a collective: say why (on this rank only)
    and end the process now; the other ranks follow with exit 3."""
    if message:
        sys.stderr.write(message + "\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)


_PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe", "socket timeout",
              "timed out", "nccl communicator was aborted", "process group", "connection refused")


def peer_lost(exc: BaseException | None) -> bool:
    """The error is a collective failing because another rank ended (or did not answer in time)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in ("DistError", "DistBackendError", "DistNetworkError", "DistStoreError"):
            return True
        text = str(exc).lower()
        if ("gloo" in text or "nccl" in text or "c10d" in text) and any(k in text for k in _PEER_LOST):
            return True
        exc = getattr(exc, "original", None) or exc.__cause__ or exc.__context__
    return False


def agree(ctx: Context, exc: BaseException | None) -> None:
    """A point every rank reaches: each says whether it failed (one all_gather_object). A rank that
    failed re-raises its own error; the others raise PeerFailed with the first failing rank's error."""
    import torch.distributed as dist

    if exc is None:
        mine = None
    elif isinstance(exc, GradcheckError):
        mine = {"message": exc.one_line(), "exit_code": exc.exit_code,
                "type": "user-code" if isinstance(exc, UserCodeError) else "input",
                "phase": getattr(exc, "phase", None)}
    else:
        mine = {"message": f"internal error in gradcheck: {type(exc).__name__}", "exit_code": 4,
                "type": "internal", "phase": None}
    everyone: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(everyone, mine)
    if exc is not None:
        exc.agreed = True   # type: ignore[attr-defined]
        raise exc
    for r, info in enumerate(everyone):
        if info is not None:
            err = PeerFailed(r, info)
            err.agreed = True   # type: ignore[attr-defined]
            raise err


def agree_code(ctx: Context, code: int) -> int:
    """The exit code every rank ends with: the highest over ranks."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([code], dtype=torch.int64, device=ctx.device or "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------

def is_fsdp2(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def prepare_model(model: Any, ctx: Context, device: Any) -> Any:
    """The module to measure: DDP unwrapped; with --fsdp, sharded with fully_shard (blocks, then root);
    an FSDP2 model as it is. A plain model gets rank 0's parameters and buffers (as DDP does)."""
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        model = model.module
    if type(model).__name__ == "FullyShardedDataParallel":
        raise InputError("the model is wrapped in FSDP1 (FullyShardedDataParallel), whose flat parameters "
                         "gradcheck cannot attribute to layers",
                         hint="return the unwrapped model and pass --fsdp (FSDP2 fully_shard), or use FSDP2")
    if is_fsdp2(model):
        ctx.strategy = "fsdp"
        return model
    if device is not None and ctx.device is not None:
        model.to(ctx.device)
    if ctx.fsdp:
        return shard(model, ctx)
    ctx.strategy = "ddp"
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)
    return model


def shard(model: Any, ctx: Context | None = None) -> Any:
    """What --fsdp does (also callable from a build() under torchrun, with ctx=None: the current run's):
    FSDP2 `fully_shard` on every repeated block (each child of an nn.ModuleList), on every large module
    outside them that holds its own parameters untied to any other module (embeddings, an LM head: at
    least 5% of the parameters), and on the root. Each unit is gathered only while it is used: the large
    leaves in their own units are freed after their forward and backward instead of staying gathered
    with the root's from the first forward to the end of the backward."""
    import torch.nn as nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    ctx = ctx or current()
    if ctx is None:
        raise InputError("distributed.shard() needs a torchrun run (the process group gradcheck started)")
    dev_type = "cuda" if ctx.backend == "nccl" else "cpu"
    mesh = init_device_mesh(dev_type, (ctx.world_size,))
    blocks = [child for m in model.modules() if isinstance(m, nn.ModuleList) for child in m.children()
              if any(True for _ in child.parameters())]
    in_blocks = {id(m) for b in blocks for m in b.modules()}
    owners: dict[int, int] = {}   # parameter -> how many modules register it (tied weights: several)
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    total = sum(p.numel() for p in model.parameters())
    leaves = [m for m in model.modules() if m is not model and id(m) not in in_blocks
              and not any(True for _ in m.children())
              and (own := list(m.parameters(recurse=False)))
              and all(owners[id(p)] == 1 for p in own) and sum(p.numel() for p in own) >= 0.05 * total]
    for unit in blocks + leaves:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    ctx.strategy = "fsdp"
    return model


# ---------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------

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

        from gradcheck_cli.batches import Batch

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
            if isinstance(obj, torch.Tensor):
                return obj[lo:hi] if obj.dim() >= 1 and obj.shape[0] == b else obj
            if isinstance(obj, tuple):
                return tuple(cut(o) for o in obj)
            if isinstance(obj, list):
                return [cut(o) for o in obj]
            if isinstance(obj, dict):
                return {k: cut(v) for k, v in obj.items()}
            return obj

        part = Batch(args=cut(batch.args), kwargs=cut(batch.kwargs), target=cut(batch.target),
                     token_input=batch.token_input)
        part.part = (lo, hi, b)   # type: ignore[attr-defined]  (losses.synth_target: the global targets' rows)
        return part


# ---------------------------------------------------------------------------------------------------------
# One step's gradients (measure.passes calls `gradients` through the driver object below)
# ---------------------------------------------------------------------------------------------------------

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
