"""Direct tests of gradcheck_cli.measure (the check passes): what gets measured, and how (host transfers)."""

from __future__ import annotations

import math
from unittest import mock

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from gradcheck_cli import batches, losses, measure  # noqa: E402
from gradcheck_cli import stats as S  # noqa: E402

CPU = torch.device("cpu")


def passes(model, shape, steps=2, seed=0, batch=None, loss=None):
    src = batches.make_batch_source(batch, shape, model, seed)
    return measure.run_passes(model, src, losses.resolve(loss), steps=steps, seed=seed, device=CPU)


def by_name(stats, name):
    layer = stats.layer(name)
    assert layer is not None, [l.name for l in stats.layers]
    return layer


# --------------------------------------------------------------------------------------------------------
# Functional activations
# --------------------------------------------------------------------------------------------------------

class FunctionalSigmoid(nn.Module):
    def __init__(self, gain: float):
        super().__init__()
        self.gain = gain
        self.fc = nn.Linear(8, 32)
        self.out = nn.Linear(32, 2)

    def forward(self, x):
        return self.out(torch.sigmoid(self.gain * self.fc(x)))


def functional_layers(stats):
    return [l for l in stats.layers if l.role == S.FUNCTIONAL]


def test_functional_sigmoid_is_measured():
    torch.manual_seed(0)
    stats = passes(FunctionalSigmoid(gain=50.0), (16, 8)).stats
    (f,) = functional_layers(stats)
    assert f.activation == S.SIGMOID and f.type == "sigmoid()"
    assert f.output_grad_norm is not None and f.output_grad_norm > 0
    assert f.calls == 1
    # Pre-activations scaled by 50 are mostly far beyond |6|: most outputs sit in the flat tails.
    assert f.saturated_fraction > 0.5
    # ... and it sits between the two Linear layers in depth order.
    order = [l.name for l in sorted(stats.layers, key=lambda l: l.index)]
    assert order.index("fc") < order.index(f.name) < order.index("out")


def test_functional_sigmoid_unsaturated_with_small_gain():
    torch.manual_seed(0)
    stats = passes(FunctionalSigmoid(gain=0.01), (16, 8)).stats
    (f,) = functional_layers(stats)
    assert f.saturated_fraction == 0.0


def test_saturated_fraction_matches_an_independent_count(tmp_path):
    torch.manual_seed(0)
    model = FunctionalSigmoid(gain=5.0)
    x = torch.randn(64, 8)
    p = tmp_path / "batch.pt"
    torch.save((x, torch.randint(0, 2, (64,))), p)
    stats = passes(model, None, steps=2, batch=str(p)).stats
    (f,) = functional_layers(stats)
    with torch.no_grad():
        s = torch.sigmoid(5.0 * model.fc(x))
    # "derivative below 1% of its maximum": s(1-s) < 0.0025
    expected = ((s * (1 - s)) < 0.0025).float().mean().item()
    assert 0.05 < expected < 0.95, "the check is not trivially 0 or 1"
    assert f.saturated_fraction == pytest.approx(expected, abs=2 / s.numel())


def test_tensor_method_tanh_and_module_sigmoid_are_not_double_counted():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.sig = nn.Sigmoid()
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.sig(self.fc(x).tanh()))

    stats = passes(M(), (8, 4)).stats
    funcs = functional_layers(stats)
    assert [l.activation for l in funcs] == [S.TANH], "x.tanh() seen; nn.Sigmoid's own torch.sigmoid not counted"
    assert by_name(stats, "sig").role == S.ACTIVATION and by_name(stats, "sig").activation == S.SIGMOID


# --------------------------------------------------------------------------------------------------------
# Dead units: per feature for Linear, per channel for convolutions
# --------------------------------------------------------------------------------------------------------

def _dead_channels_conv2d(dead: int, channels: int = 8):
    conv = nn.Conv2d(3, channels, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([-1.0] * dead + [1.0] * (channels - dead)))
    return conv


def test_dead_units_of_conv_relu_are_counted_per_channel():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = _dead_channels_conv2d(dead=5)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.relu(self.conv(x)).mean((2, 3)))

    relu = by_name(passes(M(), (4, 3, 10, 10)).stats, "relu")
    assert relu.units == 8, "units are channels, not channels x height x width"
    assert relu.dead_units == 5
    assert relu.dead_fraction == pytest.approx(5 / 8)


def test_dead_units_of_functional_relu_after_conv2d():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = _dead_channels_conv2d(dead=2)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).mean((2, 3)))

    (relu,) = functional_layers(passes(M(), (4, 3, 10, 10)).stats)
    assert (relu.units, relu.dead_units) == (8, 2)


def test_dead_units_of_conv1d_relu_are_channels():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 6, 3)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(6 * 18, 3)
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.bias.copy_(torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]))

        def forward(self, x):
            return self.fc(self.relu(self.conv(x)).flatten(1))

    relu = by_name(passes(M(), (8, 4, 20)).stats, "relu")
    assert (relu.units, relu.dead_units) == (6, 3)


def test_dead_units_of_linear_relu_are_features():
    lin = nn.Linear(5, 10)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([-1.0] * 7 + [1.0] * 3))
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(10, 2))
    relu = by_name(passes(model, (6, 5)).stats, "1")
    assert (relu.units, relu.dead_units) == (10, 7)


# --------------------------------------------------------------------------------------------------------
# Dead units vs units merely off: margins of the pre-activation and the layer's coherence
# --------------------------------------------------------------------------------------------------------

def _moments(rows: list[list[float]]) -> tuple[list[float], list[float]]:
    """Per-unit maxima and [per-unit sums..., per-unit sums of squares..., count] of samples x units values,
    by hand."""
    units = len(rows[0])
    maxima = [max(r[j] for r in rows) for j in range(units)]
    sums = [sum(r[j] for r in rows) for j in range(units)]
    sqs = [sum(r[j] ** 2 for r in rows) for j in range(units)]
    return maxima, sums + sqs + [float(len(rows) * units)]


def _relu_stats(rows):
    st = S.LayerStats(index=0, name="act", type="ReLU", role=S.ACTIVATION, activation=S.RELU)
    from gradcheck_cli.measure.accumulate import set_relu_units
    set_relu_units(st, *_moments(rows))
    return st


def test_collapsed_units_are_off_not_dead():
    """Every example gives nearly the same vector (collapse): units at -0.5..-1 std are off, not dead."""
    base = [1.0, 0.5, 2.0, -0.5, -1.0, 1.5, -0.8, -0.3]
    rows = [[b + 0.1 * ((i * 7 + j * 3) % 5 - 2) for j, b in enumerate(base)] for i in range(32)]
    st = _relu_stats(rows)
    assert (st.units, st.off_units, st.dead_units) == (8, 4, 0)
    assert 0.9 < st.coherence < 0.99999 and st.unit_samples == 32
    assert -1.0 < st.off_margin_median < 0 and st.unit_margin_min > -1.5


def test_units_off_on_varied_inputs_are_dead():
    """Varied inputs (low coherence, enough values per unit): an off unit is dead even near zero."""
    rows = [[math.sin(i * 1.3 + j), math.cos(i * 0.7 * (j + 1)), -0.2 - 0.1 * abs(math.sin(i + j)), -0.05]
            for i in range(40) for j in range(1)]
    st = _relu_stats(rows)
    assert st.coherence < 0.5 and st.unit_samples == 40
    assert (st.off_units, st.dead_units) == (2, 2)
    st = _relu_stats(rows[:8])   # too few values per unit to call a near-zero unit dead
    assert st.unit_samples == 8 and st.dead_units < st.off_units == 2


def test_units_far_below_zero_are_dead_whatever_the_coherence():
    """Collapsed inputs (coherence near 1) and half the units pushed to -10 by their bias: far below zero in
    units of the firing units' spread (the dead half does not widen the yardstick)."""
    rows = [[c + 0.1 * math.sin(i + j) for j, c in enumerate((1.0, 2.0, 0.5, 1.5))]
            + [-10.0 + 0.1 * math.sin(i * j) for j in range(4)] for i in range(8)]
    st = _relu_stats(rows)
    assert 0.9 < st.coherence < 0.99999
    assert (st.off_units, st.dead_units) == (4, 4)
    assert st.off_margin_median < -3


def test_input_independent_pre_activation_off_is_dead():
    """The same vector for every example (zero weights): an off unit is dead whatever the input."""
    st = _relu_stats([[1.0, -1.0, 0.5, -0.2]] * 16)
    assert st.coherence == pytest.approx(1.0)
    assert (st.off_units, st.dead_units) == (2, 2)


def test_without_the_pre_activation_every_off_unit_counts_as_dead():
    st = S.LayerStats(index=0, name="act", type="ReLU", role=S.ACTIVATION, activation=S.RELU)
    from gradcheck_cli.measure.accumulate import set_relu_units
    set_relu_units(st, [0.0, 0.0, 1.0], None)
    assert (st.units, st.off_units, st.dead_units, st.coherence) == (3, 2, 2, None)


class _InplaceNet(nn.Module):
    """The same Linear -> ReLU three ways: a module ReLU, nn.ReLU(inplace=True), F.relu_ / inplace=True."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(16, 32)
        with torch.no_grad():
            self.lin.bias[:12] = -5.0   # 12 units far below zero
        self.how = how
        self.relu = nn.ReLU(inplace=how == "module_inplace")
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        h = self.lin(x)
        if self.how == "functional_":
            h = F.relu_(h)
        elif self.how == "functional_kw":
            h = F.relu(h, inplace=True)
        else:
            h = self.relu(h)
        return self.head(h)


@pytest.mark.parametrize("how", ["module_inplace", "functional_", "functional_kw"])
def test_in_place_relus_measure_the_pre_activation(how):
    ref = [l for l in passes(_InplaceNet("module"), (16, 16)).stats.layers if l.units][0]
    got = [l for l in passes(_InplaceNet(how), (16, 16)).stats.layers if l.units][0]
    assert ref.coherence is not None and ref.unit_margin_min < -3
    assert (got.units, got.off_units, got.dead_units) == (ref.units, ref.off_units, ref.dead_units) == (32, 12, 12)
    assert got.coherence == pytest.approx(ref.coherence, rel=1e-5)
    assert got.unit_margin_min == pytest.approx(ref.unit_margin_min, rel=1e-5)


def test_dead_units_on_sequence_features_use_the_last_dim():
    lin = nn.Linear(5, 10)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([-1.0] * 4 + [1.0] * 6))

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.relu, self.out = lin, nn.ReLU(), nn.Linear(10, 2)

        def forward(self, x):            # (B, T, 5) -> (B, T, 10)
            return self.out(self.relu(self.lin(x)).mean(1))

    relu = by_name(passes(M(), (4, 7, 5)).stats, "relu")
    assert (relu.units, relu.dead_units) == (10, 4)


# --------------------------------------------------------------------------------------------------------
# Gradients, unused parameters, recurrent profiles, non-finite origins
# --------------------------------------------------------------------------------------------------------

def test_output_grad_norm_and_loss_match_autograd(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(4, 6), torch.randn(4, 3)
    p = tmp_path / "batch.pt"
    torch.save((x, y), p)
    stats = passes(model, None, steps=2, batch=str(p), loss="mse").stats
    h = model[0](x)
    loss = F.mse_loss(model[2](model[1](h)), y)
    assert stats.losses == pytest.approx([loss.item()] * 2, rel=1e-5)
    (gh,) = torch.autograd.grad(loss, h)
    assert by_name(stats, "0").output_grad_norm == pytest.approx(gh.norm().item(), rel=1e-4)
    grads = torch.autograd.grad(F.mse_loss(model(x), y), list(model[2].parameters()))
    expected = math.sqrt(sum(g.pow(2).sum().item() for g in grads))
    assert by_name(stats, "2").grad_norm == pytest.approx(expected, rel=1e-4)
    total = math.sqrt(sum(g.pow(2).sum().item() for g in torch.autograd.grad(F.mse_loss(model(x), y),
                                                                            list(model.parameters()))))
    assert stats.total_grad_norm == pytest.approx(total, rel=1e-4)


def test_unused_and_zero_grad_parameters():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 3)
            self.z = nn.Linear(4, 3)
            self.never = nn.Linear(4, 3)

        def forward(self, x):
            return self.b(self.a(x)) + 0 * self.z(x)

    stats = passes(M(), (8, 4)).stats
    assert stats.unused_parameters == ["never.weight", "never.bias"]
    assert stats.zero_grad_parameters == ["z.weight", "z.bias"]


def test_rnn_time_profile_recorded():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(3, 16, batch_first=True)
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    torch.manual_seed(0)
    rnn = by_name(passes(M(), (4, 40, 3)).stats, "rnn")
    assert rnn.recurrent == "RNN" and rnn.time_steps == 40 and rnn.bidirectional is False
    assert len(rnn.time_grad_profile) == 40
    # Reading only the last step: the latest steps get more gradient than the earliest ones.
    assert rnn.time_grad_first_last < 1.0
    assert rnn.recurrent_sigma_max is not None and rnn.recurrent_sigma_max > 0


def test_long_sequence_profile_is_downsampled():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(2, 4, batch_first=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0].mean(1))

    rnn = by_name(passes(M(), (2, 300, 2), steps=1).stats, "rnn")
    assert rnn.time_steps == 300
    assert len(rnn.time_grad_profile) <= 64


def test_nonfinite_forward_origin_is_the_op_line(write_file):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            p = torch.softmax(self.fc(x) * 1e4, dim=-1)
            return torch.log(p)   # log(0) = -inf

    stats = passes(M(), (8, 4)).stats
    assert not all(math.isfinite(v) for v in stats.losses)
    kind, origin = stats.origin(stats.first_nonfinite_forward)
    assert kind == "op"
    assert origin["op"] == "log"
    assert origin["file"].endswith("test_measure.py")
    import inspect
    src_lines, start = inspect.getsourcelines(M.forward)
    log_line = start + next(i for i, l in enumerate(src_lines) if "torch.log(p)" in l)
    assert origin["line"] == log_line


def test_nonfinite_backward_only_origin():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(4, 6, bias=False)
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            x = torch.cat([x, torch.zeros_like(x[:1])])
            h = self.enc(x)
            h = h / (torch.sqrt((h * h).sum(-1, keepdim=True)) + 1e-6)
            return self.head(h)[:-1]

    stats = passes(M(), (4, 4)).stats
    assert all(math.isfinite(v) for v in stats.losses)
    assert stats.first_nonfinite_forward is None
    kind, origin = stats.origin(stats.first_nonfinite_backward)
    assert kind == "op" and origin["op"] == "sqrt"
    assert by_name(stats, "enc").nonfinite_param_grads == 1
    assert by_name(stats, "head").nonfinite_param_grads == 0


def test_nan_input_is_counted(tmp_path):
    x = torch.randn(4, 4)
    x[0, 0] = float("nan")
    p = tmp_path / "nan.pt"
    torch.save((x, torch.randint(0, 3, (4,))), p)
    stats = passes(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3)), None, steps=1, batch=str(p)).stats
    assert stats.input_nonfinite == 1
    assert stats.first_nonfinite_forward == "0"


def test_nan_input_count_is_not_multiplied_by_steps(tmp_path):
    x = torch.randn(4, 4)
    x[0, 0] = float("nan")
    p = tmp_path / "nan.pt"
    torch.save((x, torch.randint(0, 3, (4,))), p)
    stats = passes(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3)), None, steps=3, batch=str(p)).stats
    assert stats.input_nonfinite == 1


def test_no_trainable_parameters_is_an_input_error():
    from gradcheck_cli.errors import InputError

    model = nn.Linear(4, 2).requires_grad_(False)
    with pytest.raises(InputError):
        passes(model, (2, 4))


def test_tied_weights_counted_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            self.head = nn.Linear(8, 20, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(self.emb(ids))

    stats = passes(Tied(), None).stats
    assert stats.trainable_parameters == 20 * 8
    assert stats.unused_parameters == []


# --------------------------------------------------------------------------------------------------------
# One host transfer per pass
# --------------------------------------------------------------------------------------------------------

SYNC_METHODS = ("cpu", "tolist", "item", "numpy", "__float__", "__int__", "__bool__")


def mlp(depth: int) -> nn.Module:
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(16, 16), nn.ReLU()]
    layers.append(nn.Linear(16, 4))
    return nn.Sequential(*layers)


def count_syncs(model: nn.Module, steps: int) -> dict:
    src = batches.make_batch_source(None, (8, 16), model, 0)
    counts = {k: 0 for k in SYNC_METHODS}
    originals = {k: getattr(torch.Tensor, k) for k in SYNC_METHODS}

    def counting(name):
        def wrapper(self, *args, **kwargs):
            counts[name] += 1
            return originals[name](self, *args, **kwargs)
        return wrapper

    with mock.patch.multiple(torch.Tensor, **{k: counting(k) for k in SYNC_METHODS}):
        measure.run_passes(model, src, losses.resolve(None), steps=steps, seed=0, device=CPU)
    return counts


def test_counting_wrapper_sees_transfers():
    # Sanity for the test below: the wrapper does intercept a .tolist() call.
    counts = {"n": 0}
    original = torch.Tensor.tolist

    def wrapper(self):
        counts["n"] += 1
        return original(self)

    with mock.patch.object(torch.Tensor, "tolist", wrapper):
        torch.ones(2).tolist()
    assert counts["n"] == 1


def test_host_transfers_independent_of_depth():
    torch.manual_seed(0)
    shallow = count_syncs(mlp(5), steps=3)
    deep = count_syncs(mlp(40), steps=3)
    assert shallow == deep, (shallow, deep)
    total = sum(deep.values())
    assert 0 < total <= 2 * (3 + 3), deep


def test_host_transfers_grow_by_a_small_constant_per_pass():
    one = sum(count_syncs(mlp(10), steps=1).values())
    four = sum(count_syncs(mlp(10), steps=4).values())
    per_pass = (four - one) / 3
    assert per_pass == int(per_pass) and 1 <= per_pass <= 3, (one, four)
