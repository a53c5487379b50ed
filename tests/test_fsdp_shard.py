"""distributed.shard (what --fsdp does): which modules become FSDP2 units, in one process with a 1-rank gloo
group (no torchrun needed)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
import torch.nn as nn  # noqa: E402

from gradcheck_cli import distributed  # noqa: E402


@pytest.fixture
def ctx():
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield distributed.Context(rank=0, world_size=1, local_rank=0, backend="gloo", fsdp=True, owns_group=True)
    finally:
        dist.destroy_process_group()


class LM(nn.Module):
    def __init__(self, tied: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 32)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(32, 32), nn.ReLU()) for _ in range(2))
        self.norm = nn.LayerNorm(32)       # small: stays with the root
        self.head = nn.Linear(32, 1000, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids)
        for block in self.layers:
            h = h + block(h)
        return self.head(self.norm(h))


def units(model):
    from torch.distributed.fsdp import FSDPModule

    return {name for name, m in model.named_modules() if isinstance(m, FSDPModule)}


def test_blocks_large_untied_leaves_and_root_are_units(ctx):
    model = distributed.shard(LM(tied=False), ctx)
    assert units(model) == {"", "embed", "layers.0", "layers.1", "head"}
    assert ctx.strategy == "fsdp"
    ids = torch.randint(0, 1000, (2, 5))
    model(ids).float().pow(2).mean().backward()   # the units run forward and backward
    assert all(p.grad is not None for p in model.parameters())


def test_tied_weights_stay_with_the_root(ctx):
    model = distributed.shard(LM(tied=True), ctx)
    assert units(model) == {"", "layers.0", "layers.1"}
