"""Models for the torchrun tests (tests/test_distributed.py): each is checked by one process on the
global batch and by 2 ranks on its halves; the reports must agree."""

import os

import torch
import torch.nn as nn

GLOBAL = torch.Generator().manual_seed(5)
X = torch.randn(8, 16, generator=GLOBAL)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))


class Blocks(nn.Module):
    """Repeated blocks in an nn.ModuleList: --fsdp shards each block, then the root."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 24)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(24, 24), nn.GELU()) for _ in range(3))
        self.out = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg)


def gpt2_batch() -> dict:
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(3))
    return {"input_ids": ids, "labels": ids}


class SqrtNaN(nn.Module):
    """NaN from sqrt of a negative input: only rows 4-7 of the global batch (rank 1's half) hold one."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lin(x) * torch.sqrt(x[:, :1]))


def nan_batch() -> torch.Tensor:
    x = X.clone()
    x[:4, 0] = 1.0
    x[4:, 0] = -1.0
    return x


class DeadHalf(nn.Module):
    """Identity into a ReLU: unit 0 fires only on rows 0-3 (rank 0), unit 1 only on rows 4-7 (rank 1),
    units 2 and 3 never: globally 2 of 4 units are dead; each rank alone would see 3."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(4))
            self.lin.bias.zero_()
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.lin(x)))


def dead_batch() -> torch.Tensor:
    x = -torch.ones(8, 4)
    x[:4, 0] = 1.0
    x[4:, 1] = 1.0
    return x


def ranked_batch(rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """A loader that shards itself: called with rank/world_size under torchrun, without in one process."""
    return X.tensor_split(world_size)[rank]


class RaisesOnRank1(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if os.environ.get("RANK") == "1":
            raise RuntimeError("boom on rank 1")
        return self.lin(x)


# The same models sharded by their build() with gradcheck's own --fsdp sharding (distributed.shard): a
# model already sharded with FSDP2 is measured as it is, so one torchrun launch checks both strategies.
def _sharded(build):
    def fsdp_build() -> nn.Module:
        from gradcheck_cli.distributed import shard

        return shard(build())
    return fsdp_build


fsdp_mlp = _sharded(mlp)
fsdp_Blocks = _sharded(Blocks)
fsdp_gpt2 = _sharded(gpt2)
fsdp_SqrtNaN = _sharded(SqrtNaN)
fsdp_DeadHalf = _sharded(DeadHalf)


# The training rehearsal (--train-steps) under torchrun: a ReLU MLP (He init) that learns its synthetic
# batches with SGD + momentum at lr 0.05, and the same with lr 1.0 (the loss diverges within a few steps).
def train_mlp() -> nn.Module:
    torch.manual_seed(11)
    layers = []
    for a, b in ((16, 64), (64, 64), (64, 4)):
        lin = nn.Linear(a, b)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


fsdp_train_mlp = _sharded(train_mlp)


def partial_sgd(model: nn.Module) -> torch.optim.Optimizer:
    """An optimizer built over the wrong parameters: the last layer is left out."""
    return torch.optim.SGD([p for n, p in model.named_parameters() if not n.startswith("4.")], lr=0.05)


class LateNaN(nn.Module):
    """NaN from sqrt of a negative input from its 5th forward call on (the check makes 2, so the third
    training step): only rows 4-7 of nan_batch (rank 1's half) are negative."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 8)
        self.head = nn.Linear(8, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = self.lin(x)
        if self.calls >= 5:
            h = h * torch.sqrt(x[:, :1])
        return self.head(h)


class RaisesInRehearsalOnRank1(nn.Module):
    """Rank 1 raises at its 4th forward call: in the training rehearsal (the check makes 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls >= 4 and os.environ.get("RANK") == "1":
            raise RuntimeError("boom in the rehearsal on rank 1")
        return self.lin(x)


fsdp_LateNaN = _sharded(LateNaN)
