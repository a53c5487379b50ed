"""The seams of gradcheck_cli.measure that later drivers build on: attach/step/detach in a user's own
loop (reading p.grad, unscaled under loss scaling), the per-step record and its reduce ops, the model
snapshot, hooks that never outlive their pass, and exceptions that do not keep the graph alive."""

from __future__ import annotations

import gc
import math
import weakref

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from gradcheck_cli import batches, losses  # noqa: E402
from gradcheck_cli.errors import UserCodeError  # noqa: E402
from gradcheck_cli.measure import KEYS, Monitor, Reduce, StepRecord, reduce_records, run_passes  # noqa: E402
from gradcheck_cli.measure import kernels, model_state  # noqa: E402

CPU = torch.device("cpu")


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8), nn.Sigmoid(), nn.Linear(8, 3))


def all_module_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


# --------------------------------------------------------------------------------------------------------
# attach / step / detach in a plain training loop
# --------------------------------------------------------------------------------------------------------

def test_monitor_in_a_plain_loop_reads_p_grad():
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w0 = model[0].weight.detach().clone()
    mon = Monitor(model).attach()
    assert all_module_hooks(model) > 0
    seen_losses, fc0_norms, total_norms, relu_out_norms = [], [], [], []
    torch.manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
        opt.zero_grad()
        kept = {}

        def keep(mod, inputs, out):
            out.retain_grad()
            kept["relu"] = out

        h = model[1].register_forward_hook(keep)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        h.remove()
        seen_losses.append(loss.item())
        fc0_norms.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model[0].parameters())))
        total_norms.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters())))
        relu_out_norms.append(float(kept["relu"].grad.norm()))
        summary = mon.step(loss)
        assert summary["total_grad_norm"] == pytest.approx(total_norms[-1], rel=1e-5)
        opt.step()
    mon.detach()
    assert all_module_hooks(model) == 0, "detach removed every hook"
    assert not torch.equal(model[0].weight, w0), "the optimizer's steps are the user's: nothing restored"
    stats = mon.finish()
    assert stats.steps == 3
    assert stats.losses == pytest.approx(seen_losses, rel=1e-6)
    assert stats.series.total_grad_norms == pytest.approx(total_norms, rel=1e-5)
    assert stats.series.layer_grad_norms["0"] == pytest.approx(fc0_norms, rel=1e-5)
    assert stats.series.layer_output_grad_norms["1"] == pytest.approx(relu_out_norms, rel=1e-5)
    assert stats.layer("0").grad_norm == pytest.approx(sum(fc0_norms) / 3, rel=1e-5)
    assert stats.layer("3").saturated_fraction is not None


def test_monitor_unscales_loss_scaled_gradients():
    def run(scale):
        model = small_net()
        torch.manual_seed(2)
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
        with Monitor(model) as mon:
            loss = F.cross_entropy(model(x), y)
            (loss * scale).backward()
            mon.step(loss, grad_scale=scale)
        return mon.finish()

    plain, scaled = run(1.0), run(1024.0)
    assert scaled.total_grad_norm == pytest.approx(plain.total_grad_norm, rel=1e-5)
    assert scaled.layer("1").output_grad_norm == pytest.approx(plain.layer("1").output_grad_norm, rel=1e-5)
    assert scaled.layer("0").grad_norm == pytest.approx(plain.layer("0").grad_norm, rel=1e-5)


def test_monitor_with_grads_already_unscaled():
    model = small_net()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    with Monitor(model) as mon:
        loss = F.cross_entropy(model(x), y)
        (loss * 8.0).backward()
        for p in model.parameters():          # what scaler.unscale_(optimizer) does
            p.grad /= 8.0
        expected = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
        summary = mon.step(loss, grad_scale=8.0, grads_unscaled=True)
    assert summary["total_grad_norm"] == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------------------------------------
# The per-step record and its reduce ops
# --------------------------------------------------------------------------------------------------------

class NanNet(nn.Module):
    """Sigmoid, ReLU, an LSTM and a log of a softmax that underflows: every kind of key, and a diagnosis."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.act = nn.ReLU()
        self.sig = nn.Sigmoid()
        self.rnn = nn.LSTM(6, 6, batch_first=True)
        self.head = nn.Linear(6, 3)
        self.side = self.side_leaf = None

    def forward(self, x):
        h = self.sig(self.act(self.fc(x)))
        h = self.rnn(h)[0].mean(1)
        # A side branch the loss does not use: its graph stays intact after the pass's backward.
        self.side_leaf = h.detach().requires_grad_(True)
        self.side = torch.log(self.side_leaf.abs() + 1.0)
        return torch.log(torch.softmax(self.head(h) * 1e4, dim=-1))   # log(0) = -inf


def test_every_emitted_key_is_declared(monkeypatch):
    from gradcheck_cli.measure import passes as P

    records = []
    original = P.Monitor.step

    def spy(self, *a, **k):
        out = original(self, *a, **k)
        records.append(self.last_record)
        return out

    monkeypatch.setattr(P.Monitor, "step", spy)
    src = batches.make_batch_source(None, (4, 5, 4), NanNet(), 0)
    run_passes(NanNet(), src, losses.resolve(None), steps=2, seed=0, device=CPU)
    assert len(records) == 3, "two steps and one diagnosis re-run"
    emitted = {key for r in records for _, key, _, _, _ in r.entries}
    assert {"g", "sat", "sat_n", "calls", "dead", "loss", "pgrad", "out", "op", "opg", "pgrad_bad"} <= emitted
    assert emitted <= set(KEYS), emitted - set(KEYS)
    for r in records:
        positions = sorted(i for ps in r.positions_by_op().values() for i in ps)
        assert positions == list(range(len(r.values))), "every value has exactly one reduce op"


def two_rank_records():
    """One step of the same model on two different batches, as two ranks would record it."""
    recs = []
    for seed in (0, 1):
        model = small_net()
        torch.manual_seed(seed)
        with Monitor(model) as mon:
            loss = F.cross_entropy(model(torch.randn(8, 6)), torch.randint(0, 3, (8,)))
            loss.backward()
            mon.step(loss)
        recs.append(mon.last_record)
    return recs


def test_reduce_records_applies_each_keys_op():
    a, b = two_rank_records()
    r = reduce_records([a, b])
    assert r.layout() == a.layout()
    checked = set()
    for slot, key, vals, _ in r.items():
        va, vb = a.get(slot, key), b.get(slot, key)
        op = KEYS[key].reduce
        for v, x, y in zip(vals, va, vb):
            want = {Reduce.SUM: x + y, Reduce.MAX: max(x, y), Reduce.MIN: min(x, y),
                    Reduce.ANY: float(x != 0 or y != 0)}[op]
            assert v == pytest.approx(want), (slot, key)
        checked.add(key)
    assert {"g", "loss", "pgrad", "calls", "sat"} <= checked
    assert KEYS["g"].reduce is Reduce.SUM and KEYS["input_nf"].reduce is Reduce.MAX
    assert KEYS["dead"].reduce is Reduce.MIN and KEYS["out"].reduce is Reduce.ANY


def test_reduce_records_refuses_different_layouts():
    a, _ = two_rank_records()
    shorter = StepRecord(entries=a.entries[:-1], values=a.values)
    with pytest.raises(ValueError):
        reduce_records([a, shorter])


# --------------------------------------------------------------------------------------------------------
# Snapshot and restore
# --------------------------------------------------------------------------------------------------------

class Buffered(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.register_buffer("mask", torch.ones(256, 256), persistent=False)   # a large derived constant
        self.register_buffer("ema", torch.zeros(4))
        self.bump_mask = False

    def forward(self, x):
        h = self.bn(self.fc(x))
        with torch.no_grad():
            self.ema.mul_(0.9).add_(h.mean(0), alpha=0.1)
        if self.bump_mask:
            self.mask[0, 0] += 1
        return h * self.mask[0, 0]


def test_snapshot_restores_exactly_and_copies_persistent_buffers_only():
    m = Buffered().eval()
    m.fc.train()
    before = {n: b.clone() for n, b in m.state_dict().items()}
    flags = {n: mod.training for n, mod in m.named_modules()}
    ids = {n: id(b) for n, b in m.named_buffers()}
    state = model_state.snapshot(m)
    copied = {id(orig) for orig, _ in state.saved}
    assert id(m.mask) not in copied, "the non-persistent mask is not copied"
    assert {id(m.ema), id(m.bn.running_mean), id(m.bn.running_var), id(m.bn.num_batches_tracked)} <= copied
    m.train()
    for _ in range(2):
        m(torch.randn(8, 4))
    m.bn.running_var = torch.full((4,), 9.0)   # a buffer replaced by the code
    assert not torch.equal(m.ema, before["ema"])
    model_state.restore(m, state)
    after = m.state_dict()
    for n, b in before.items():
        assert torch.equal(after[n], b), n
    assert {n: mod.training for n, mod in m.named_modules()} == flags
    assert {n: id(b) for n, b in m.named_buffers()} == ids
    assert state.notes == []


def test_in_place_update_of_a_non_persistent_buffer_is_named():
    m = Buffered()
    m.bump_mask = True
    src = batches.make_batch_source(None, (8, 4), m, 0)
    result = run_passes(m, src, losses.resolve(None), steps=1, seed=0, device=CPU)
    assert any("mask" in n and "non-persistent" in n for n in result.notes), result.notes


def test_seeded_devices_on_cpu_is_empty_and_rng_is_forked():
    m = small_net()
    assert model_state.seeded_devices(m, CPU) == []
    state = torch.get_rng_state()
    with model_state.forked_rng([]):
        model_state.seed(123, [])
        a = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), a), "seed() seeds the CPU generator like torch.manual_seed"


# --------------------------------------------------------------------------------------------------------
# Hooks on grad_fn nodes are removed; a kept exception keeps no graph alive
# --------------------------------------------------------------------------------------------------------

def test_risky_op_grad_fn_hooks_are_removed_after_the_pass(monkeypatch):
    calls = {"n": 0}
    original = kernels.has_nonfinite

    def counting(t):
        calls["n"] += 1
        return original(t)

    monkeypatch.setattr(kernels, "has_nonfinite", counting)
    m = NanNet()
    src = batches.make_batch_source(None, (4, 5, 4), m, 0)
    stats = run_passes(m, src, losses.resolve(None), steps=1, seed=0, device=CPU).stats
    assert stats.first_nonfinite_forward is not None, "the diagnosis ran (and hooked the log's grad_fn)"
    assert calls["n"] > 0
    side, leaf = m.side, m.side_leaf     # from the diagnosis pass, whose log() grad_fn was hooked
    assert side is not None and type(side.grad_fn).__name__ == "LogBackward0"
    calls["n"] = 0
    torch.autograd.grad(side.sum(), leaf)   # backward through the kept graph, after the run
    assert calls["n"] == 0, "a hook of the finished pass ran again"


class Raising(nn.Module):
    def __init__(self, refs):
        super().__init__()
        self.fc = nn.Linear(4, 64)
        self.refs = refs

    def forward(self, x):
        big = self.fc(x).repeat(1, 64)
        self.refs.append(weakref.ref(big))
        raise RuntimeError("user forward fails")


def test_a_kept_exception_does_not_keep_the_graph_alive():
    refs = []
    m = Raising(refs)
    src = batches.make_batch_source(None, (8, 4), m, 0)
    with pytest.raises(UserCodeError) as info:
        run_passes(m, src, losses.resolve(None), steps=1, seed=0, device=CPU)
    kept = info.value                       # an API caller holding on to the error
    gc.collect()
    assert refs and refs[0]() is None, "the activation is still reachable from the kept exception"
    assert kept.original is not None and kept.where == "`(model)` (Raising)"
    import traceback

    text = "".join(traceback.format_exception(type(kept.original), kept.original, kept.original.__traceback__))
    assert "user forward fails" in text and "test_measure_seams.py" in text, "the traceback still prints"


def test_a_kept_loss_error_does_not_keep_the_output_alive():
    refs = []

    def bad_loss(output, target):
        refs.append(weakref.ref(output))
        raise ArithmeticError("bad loss")

    m = small_net()
    src = batches.make_batch_source(None, (8, 6), m, 0)
    loss = losses.LossFn("callable", fn=bad_loss, spec="x.py:bad_loss")
    with pytest.raises(UserCodeError) as info:
        run_passes(m, src, loss, steps=1, seed=0, device=CPU)
    kept = info.value
    gc.collect()
    assert refs and refs[0]() is None
    assert kept.phase == "loss"


# --------------------------------------------------------------------------------------------------------
# Hints naming CLI options are worded by the pipeline, not by the measuring code
# --------------------------------------------------------------------------------------------------------

def test_measuring_errors_carry_a_reason_and_the_pipeline_words_the_hint():
    from gradcheck_cli.pipeline import add_hint

    class Shapes(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 3)

        def forward(self, x):
            return self.fc(x)

    m = Shapes()
    src = batches.make_batch_source(None, (8, 4), m, 0)
    with pytest.raises(UserCodeError) as info:
        run_passes(m, src, losses.resolve(None), steps=1, seed=0, device=CPU)
    err = info.value
    assert err.reason == "shape" and err.hint is None
    assert "(8, 4)" in err.detail or "8, 4" in err.detail or "8x4" in err.detail, err.detail
    add_hint(err)
    assert "--input-shape" in err.hint and err.detail in err.hint


def test_no_cli_option_is_named_in_the_measuring_code():
    import pathlib
    import re

    import gradcheck_cli.measure as M

    for path in pathlib.Path(M.__file__).parent.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"--[a-z][a-z-]+", text), f"{path.name} names a CLI option"
