"""The training rehearsal's distributed path in one process, with a 1-rank gloo group (no torchrun needed;
tests/test_distributed.py compares 2 real ranks with one process): DDP trains a deep copy, FSDP2 trains the
sharded model itself and puts its shards back; both give the plain rehearsal's trajectory."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
import torch.nn as nn  # noqa: E402

from gradcheck_cli import distributed, losses  # noqa: E402
from gradcheck_cli.batches import make_batch_source  # noqa: E402
from gradcheck_cli.distributed.driver import Driver  # noqa: E402
from gradcheck_cli.distributed.rank_batches import RankBatches  # noqa: E402
from gradcheck_cli.distributed.strategy import prepare_model  # noqa: E402
from gradcheck_cli.measure.distributed import local  # noqa: E402
from gradcheck_cli.measure.training import TrainSettings, rehearse  # noqa: E402

CPU = torch.device("cpu")
TRAIN = TrainSettings(steps=4, optimizer="sgd", lr=0.3)


@pytest.fixture
def group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def _rehearse(model: nn.Module, driver=None):
    src = driver.batches if driver is not None else make_batch_source(None, (8, 16), model, 0)
    return rehearse(model, src, losses.resolve(None), train=TRAIN, seed=0, device=CPU, dist=driver)[0]


def _driver(model: nn.Module, fsdp: bool):
    ctx = distributed.Context(rank=0, world_size=1, local_rank=0, backend="gloo", fsdp=fsdp, owns_group=False)
    src = make_batch_source(None, (8, 16), model, 0)
    model = prepare_model(model, ctx, CPU)
    return model, Driver(ctx, RankBatches(src, ctx))


def _same(a, b) -> None:
    assert a.steps == b.steps == TRAIN.steps
    for x, y in zip(a.losses + a.grad_norms, b.losses + b.grad_norms):
        assert math.isclose(x, y, rel_tol=1e-5), (x, y)
    assert a.update_ratios.keys() == b.update_ratios.keys()
    for name in a.update_ratios:
        for x, y in zip(a.update_ratios[name], b.update_ratios[name]):
            assert math.isclose(x, y, rel_tol=1e-5), (name, x, y)
    assert a.relu_last_alive == b.relu_last_alive
    assert a.params_not_in_optimizer == b.params_not_in_optimizer


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_one_rank_rehearsal_equals_plain(group, fsdp):
    plain = _rehearse(_model())
    model, driver = _driver(_model(), fsdp)
    assert driver.ctx.strategy == ("fsdp" if fsdp else "ddp")
    before = [local(p.detach()).clone() for p in model.parameters()]
    traj = _rehearse(model, driver)
    _same(plain, traj)
    assert traj.losses[-1] != traj.losses[0]   # it trained
    # the model is as it was: DDP trained a deep copy; FSDP2 trained the sharded model and put it back
    assert all(torch.equal(b, local(p.detach())) for b, p in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    if fsdp:
        assert all(type(p).__name__ == "DTensor" for p in model.parameters())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_rehearsal_refused_under_torchrun(group, precision, monkeypatch):
    """Under torchrun the rehearsal is fp32 only for now (README "Distributed", limits): exit 2 with what
    to do, agreed by every rank, before the model is built."""
    from gradcheck_cli.config import Settings
    from gradcheck_cli.errors import InputError
    from gradcheck_cli.pipeline import run_check

    ctx = distributed.Context(rank=0, world_size=1, local_rank=0, backend="gloo", fsdp=False, owns_group=False)
    monkeypatch.setattr(distributed, "_current", ctx)
    with pytest.raises(InputError) as info:
        run_check(Settings(model=f"{__file__}:_model", input_shape=(8, 16), train_steps=2, precision=precision,
                           device="cpu"))
    assert f"--precision {precision}" in str(info.value) and "torchrun" in str(info.value)
    assert info.value.exit_code == 2 and "--precision fp32" in (info.value.hint or "")
    assert getattr(info.value, "agreed", False)
