"""The model's strategy under torchrun: data parallel, or FSDP2.

- Strategy "ddp": a plain model (or one wrapped in DistributedDataParallel, measured through its
  `.module`, so names carry no `module.` prefix) runs on every rank, with rank 0's parameters and buffers.
- Strategy "fsdp": `--fsdp` shards the model with FSDP2 `fully_shard` (`shard`: every child of an
  nn.ModuleList (the repeated blocks), every large untied leaf outside them (embeddings, LM head), and the
  root); a model already sharded with FSDP2 is used as it is. An FSDP1 model is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradcheck_cli.errors import InputError

if TYPE_CHECKING:
    from gradcheck_cli.distributed import Context


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

    from gradcheck_cli.distributed import current

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
