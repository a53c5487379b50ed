"""After a check the user's model is exactly as it was given: weights, .grad, modes, buffers, hooks, RNG."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from gradcheck_cli import batches, loading, losses, measure  # noqa: E402
from gradcheck_cli.config import Settings  # noqa: E402
from gradcheck_cli.errors import UserCodeError  # noqa: E402
from gradcheck_cli.pipeline import run_check  # noqa: E402

CPU = torch.device("cpu")

USER_FILE = """
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 16)
        self.bn = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)
        self.fail_after_fc2 = False

    def forward(self, x):
        h = torch.relu(self.bn(self.fc1(x)))
        h = self.drop(torch.tanh(self.fc2(h)))
        if self.fail_after_fc2:
            raise RuntimeError("user forward fails midway")
        return self.head(h)


def _prepare(m):
    torch.manual_seed(1234)
    for p in m.parameters():
        p.data.normal_()
    m.fc1.weight.grad = torch.full_like(m.fc1.weight, 0.25)   # an existing gradient
    m.bn.running_mean.fill_(0.5)
    m.bn.running_var.fill_(2.0)
    m.bn.num_batches_tracked.fill_(7)
    m.eval()              # partly in eval mode ...
    m.fc2.train()         # ... and partly in training mode
    return m


model = _prepare(Net())
failing = _prepare(Net())
failing.fail_after_fc2 = True
"""


def make_net():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(10, 16)
            self.bn = nn.BatchNorm1d(16)
            self.drop = nn.Dropout(0.3)
            self.fc2 = nn.Linear(16, 16)
            self.head = nn.Linear(16, 3)
            self.fail_after_fc2 = False

        def forward(self, x):
            h = torch.relu(self.bn(self.fc1(x)))
            h = self.drop(torch.tanh(self.fc2(h)))
            if self.fail_after_fc2:
                raise RuntimeError("user forward fails midway")
            return self.head(h)

    m = Net()
    m.fc1.weight.grad = torch.full_like(m.fc1.weight, 0.25)
    m.bn.running_mean.fill_(0.5)
    m.bn.running_var.fill_(2.0)
    m.bn.num_batches_tracked.fill_(7)
    m.eval()
    m.fc2.train()
    return m


def snapshot(model: nn.Module) -> dict:
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "param_ids": {n: id(p) for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks),
                      dict(getattr(m, "_backward_pre_hooks", {})))
                  for n, m in model.named_modules()},
        "dict_keys": {n: sorted(vars(m)) for n, m in model.named_modules()},
    }


def assert_same(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["param_ids"] == before["param_ids"], "parameters were replaced"
    for n, p in before["params"].items():
        assert torch.equal(after["params"][n], p), f"parameter {n} changed"
    assert after["requires_grad"] == before["requires_grad"]
    for n, g in before["grads"].items():
        if g is None:
            assert after["grads"][n] is None, f"{n}.grad was written"
        else:
            assert torch.equal(after["grads"][n], g), f"{n}.grad changed"
    assert before["buffers"].keys() == after["buffers"].keys()
    for n, b in before["buffers"].items():
        assert torch.equal(after["buffers"][n], b), f"buffer {n} changed"
    assert after["training"] == before["training"], "training flags not restored"
    assert after["hooks"] == before["hooks"], "hooks left behind (or removed)"
    assert after["dict_keys"] == before["dict_keys"], "attributes added to modules"


def passes(model, steps=3, shape=(8, 10), seed=0):
    src = batches.make_batch_source(None, shape, model, seed)
    return measure.run_passes(model, src, losses.resolve(None), steps=steps, seed=seed, device=CPU)


def test_the_check_would_change_the_model_if_it_did_not_restore_it():
    # Sanity: a plain train-mode forward does move BatchNorm's statistics, so the tests below mean something.
    m = make_net()
    before = snapshot(m)
    m.train()
    m(torch.randn(8, 10))
    assert not torch.equal(m.bn.running_mean, before["buffers"]["bn.running_mean"])
    assert int(m.bn.num_batches_tracked) == 8


def test_run_passes_leaves_model_untouched():
    m = make_net()
    own_calls = []
    handle = m.fc1.register_forward_hook(lambda mod, i, o: own_calls.append(1))   # the user's own hook
    before = snapshot(m)
    rng = torch.get_rng_state()
    result = passes(m)
    assert own_calls == [1, 1, 1], "the user's hook kept working during the passes"
    assert result.stats.layers, "the passes did measure something"
    assert_same(m, before)
    assert torch.equal(torch.get_rng_state(), rng), "global RNG state changed"
    assert m.fc1._forward_hooks and handle.id in m.fc1._forward_hooks, "the user's hook is still there"
    handle.remove()


def test_run_passes_with_a_pre_existing_grad_on_every_parameter():
    m = make_net()
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    before = snapshot(m)
    passes(m, steps=2)
    assert_same(m, before)


def test_run_passes_on_a_model_fully_in_eval_mode():
    m = make_net().eval()
    before = snapshot(m)
    passes(m)
    assert_same(m, before)
    assert not any(mod.training for mod in m.modules())


def test_user_forward_raising_midway_leaves_model_untouched():
    m = make_net()
    m.fail_after_fc2 = True
    before = snapshot(m)
    rng = torch.get_rng_state()
    with pytest.raises(UserCodeError) as info:
        passes(m)
    assert info.value.phase == "forward"
    assert "midway" in info.value.one_line()
    assert_same(m, before)
    assert torch.equal(torch.get_rng_state(), rng)
    # No torch-function mode (the functional-activation watcher) is left active either.
    from torch.overrides import _get_current_function_mode_stack

    assert _get_current_function_mode_stack() == []


def test_loss_raising_leaves_model_untouched():
    m = make_net()
    before = snapshot(m)

    def bad_loss(output, target):
        raise ArithmeticError("bad loss")

    loss = losses.LossFn("callable", fn=bad_loss, spec="x.py:bad_loss")
    src = batches.make_batch_source(None, (8, 10), m, 0)
    with pytest.raises(UserCodeError):
        measure.run_passes(m, src, loss, steps=2, seed=0, device=CPU)
    assert_same(m, before)


def test_frozen_parameters_are_not_unfrozen():
    m = make_net()
    m.fc1.requires_grad_(False)
    before = snapshot(m)
    res = passes(m)
    assert_same(m, before)
    assert not any(n.startswith("fc1.") for n in res.stats.unused_parameters), "frozen params are not 'unused'"


def test_recurrent_model_untouched():
    torch.manual_seed(0)

    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(4, 8, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    m = Seq()
    before = snapshot(m)
    res = passes(m, shape=(4, 20, 4))
    assert res.stats.layer("rnn").time_steps == 20
    assert_same(m, before)


def test_pipeline_with_an_instance_from_a_user_file(write_file):
    path = write_file("usernet.py", USER_FILE)
    spec = f"{path}:model"
    m = loading.load_object(spec)          # the loader caches the module: run_check sees this very object
    before = snapshot(m)
    assert before["grads"]["fc1.weight"] is not None and before["grads"]["fc2.weight"] is None
    rng = torch.get_rng_state()
    report = run_check(Settings(model=spec, input_shape=(8, 10), steps=2))
    assert loading.load_object(spec) is m
    assert report.model["class"] == "Net"
    assert_same(m, before)
    assert torch.equal(torch.get_rng_state(), rng)


def test_pipeline_failing_instance_from_a_user_file(write_file):
    path = write_file("usernet2.py", USER_FILE)
    spec = f"{path}:failing"
    m = loading.load_object(spec)
    before = snapshot(m)
    rng = torch.get_rng_state()
    with pytest.raises(UserCodeError) as info:
        run_check(Settings(model=spec, input_shape=(8, 10)))
    assert info.value.exit_code == 3
    assert_same(m, before)
    assert torch.equal(torch.get_rng_state(), rng)


def test_pipeline_with_a_factory_leaves_global_rng_alone(write_file):
    path = write_file("factory.py", """
        import torch.nn as nn

        def build():
            return nn.Sequential(nn.Linear(10, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
    """)
    rng = torch.get_rng_state()
    run_check(Settings(model=f"{path}:build", steps=2))
    assert torch.equal(torch.get_rng_state(), rng)


def test_cli_leaves_instance_untouched(write_file, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from gradcheck_cli.cli import app

    monkeypatch.chdir(tmp_path)
    path = write_file("usernet3.py", USER_FILE)
    spec = f"{path}:model"
    m = loading.load_object(spec)
    before = snapshot(m)
    r = CliRunner().invoke(app, ["check", spec, "--input-shape", "8,10", "--fail-on", "never"])
    assert r.exit_code == 0, r.stderr
    assert_same(m, before)
    failing = loading.load_object(f"{path}:failing")
    before = snapshot(failing)
    r = CliRunner().invoke(app, ["check", f"{path}:failing", "--input-shape", "8,10"])
    assert r.exit_code == 3 and "midway" in r.stderr
    assert_same(failing, before)


def test_repeated_runs_are_reproducible():
    m = make_net()
    a = passes(m, steps=2).stats
    b = passes(m, steps=2).stats
    assert a.losses == b.losses
    assert [l.output_grad_norm for l in a.layers] == [l.output_grad_norm for l in b.layers]
    c = copy.deepcopy(m)
    assert passes(c, steps=2).stats.losses == a.losses


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_model_checked_on_cuda_comes_back_to_cpu():
    m = make_net()
    before = snapshot(m)
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state()
    res = passes_on(m, torch.device("cuda"))
    assert res.stats.layers
    assert all(p.device.type == "cpu" for p in m.parameters())
    assert all(b.device.type == "cpu" for b in m.buffers())
    assert all(p.grad is None or p.grad.device.type == "cpu" for p in m.parameters())
    assert_same(m, before)
    assert torch.equal(torch.get_rng_state(), cpu_rng)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)


def passes_on(model, device, steps=2):
    src = batches.make_batch_source(None, (8, 10), model, 0)
    return measure.run_passes(model, src, losses.resolve(None), steps=steps, seed=0, device=device)
