"""--verify-fixes: the fix applier on hand-built modules, the comparison, the user's model left alone, and
the JSON/text through the real CLI on the broken examples of issue 14 (and silence on healthy ones)."""
from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
import jsonschema  # noqa: E402
import torch.nn as nn  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from gradcheck_cli import fixes as X  # noqa: E402
from gradcheck_cli import verify, verify_apply, verify_compare  # noqa: E402
from gradcheck_cli.cli import app  # noqa: E402
from gradcheck_cli.findings import Finding, Severity  # noqa: E402
from gradcheck_cli.stats import LayerStats, RunStats  # noqa: E402

from conftest import ROOT  # noqa: E402

runner = CliRunner()
SCHEMA = json.loads((ROOT / "gradcheck_cli" / "report" / "schema.json").read_text())
C = "benchmarks/calibration_models.py:"


def _mlp(act=nn.Sigmoid, n=4):
    layers = []
    for _ in range(n):
        layers += [nn.Linear(8, 8), act()]
    return nn.Sequential(*layers, nn.Linear(8, 2))


# --- the applier on hand-built modules ------------------------------------------------------------------------
def test_swap_remove_and_inits_change_exactly_the_named_modules():
    m = _mlp()
    keep = m[6].weight.detach().clone()
    verify_apply.apply_steps(m, (X.swap(["1", "3"], "relu"), X.swap(["5"], "leaky-relu", 0.02), X.remove(["7"]),
                           X.init(["0"], "kaiming-normal", nonlinearity="relu"), X.bias(["2"], -0.5)), seed=0)
    assert [type(m[i]).__name__ for i in (1, 3, 5, 7)] == ["ReLU", "ReLU", "LeakyReLU", "Identity"]
    assert m[5].negative_slope == 0.02
    assert torch.equal(m[6].weight, keep)                       # not named: untouched
    assert torch.all(m[0].bias == 0)                            # zero_bias
    assert torch.all(m[2].bias == -0.5)
    big = nn.Linear(4096, 256)
    verify_apply.apply_steps(big, (X.init([""], "kaiming-normal", nonlinearity="relu"),), seed=0)
    assert abs(big.weight.std().item() / (2 / 4096) ** 0.5 - 1) < 0.05   # He std


def test_recurrent_norm_and_scale_steps():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(4, 16)
            self.lstm = nn.LSTM(4, 8)
            self.norm = nn.LayerNorm(8, eps=0.0)
            self.bn = nn.BatchNorm1d(8)
            self.head = nn.Linear(8, 3)

    n = Net()
    nn.init.normal_(n.bn.weight, std=0.02)
    w = n.head.weight.detach().clone()
    verify_apply.apply_steps(n, (X.orthogonal(["rnn.weight_hh_l0"], 1.0), X.forget_bias(["lstm"], 1.0),
                           X.norm_eps(["norm"], 1e-5), X.norm_scale(["bn"], 1.0), X.scale_weight(["head"], 0.1)),
                       seed=0)
    s = torch.linalg.svdvals(n.rnn.weight_hh_l0.detach())
    assert torch.allclose(s, torch.ones_like(s), atol=1e-4)
    forget = (n.lstm.bias_ih_l0 + n.lstm.bias_hh_l0)[8:16]
    assert torch.allclose(forget, torch.ones(8))
    assert n.norm.eps == 1e-5 and torch.all(n.bn.weight == 1)
    assert torch.allclose(n.head.weight, w * 0.1)


@pytest.mark.parametrize("steps, message", [
    ((X.swap(["0"], "relu"),), "not a parameter-free activation"),          # a Linear is not an activation
    ((X.swap(["gate"], "relu"),), "gate"),                                    # gates keep their sigmoid
    ((X.init(["nope"], "kaiming-normal"),), "no module named"),
    ((X.forget_bias(["0"], 1.0),), "not an nn.LSTM"),
])
def test_steps_that_do_not_fit_the_model_are_refused(steps, message):
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module("0", nn.Linear(2, 2))
            self.gate = nn.Sigmoid()

    with pytest.raises(verify_apply.NotApplicable, match=message):
        verify_apply.apply_steps(Gated(), steps, seed=0)


def test_a_fix_is_a_string_that_keeps_its_steps_through_copy_and_pickle():
    f = X.fix("Replace it", X.swap(["a"], "relu"), None)
    assert f == "Replace it" and isinstance(f, str)
    for g in (copy.deepcopy(f), pickle.loads(pickle.dumps(f))):
        assert g == f and g.steps == ({"kind": "swap-activation", "modules": ["a"], "to": "relu"},)
    assert X.fix("Add residual connections", reason=X.ARCHITECTURE).steps == ()
    assert X.reason_of("plain text") == X.CODE_CHANGE


# --- the comparison (pure) ------------------------------------------------------------------------------------
def _stats(grads):
    layers = [LayerStats(index=i, name=str(i), type="Linear", role="param", output_grad_norm=g, trainable_params=10)
              for i, g in enumerate(grads)]
    return RunStats(layers=layers, steps=1, losses=[1.0])


def test_compare_resolved_before_after_and_new_findings():
    before = Finding("vanishing-gradients", "GC101", Severity.ERROR, "0", "m", {"early_late_ratio": 1e-7})
    other = Finding("saturated-activations", "GC104", Severity.WARNING, "1", "m", {"saturated_fraction": {"1": 0.9}})
    after_stats = _stats([0.5, 0.7, 0.9, 1.0])
    new = Finding("initial-loss", "GC107", Severity.WARNING, "3", "m", {"ratio": 3.0})
    info = Finding("vanishing-gradients", "GC101", Severity.INFO, "0", "m", {"early_late_ratio": 0.5})
    res = verify_compare.compare(before, [before, other], [new, info], after_stats)
    assert res["resolved"] is True                       # an info leftover is resolved
    assert res["before"] == 1e-7 and res["after"] == 0.5  # the leftover's own number
    assert res["new_findings"] == ["initial-loss"]
    still = Finding("vanishing-gradients", "GC101", Severity.WARNING, "0", "m", {"early_late_ratio": 1e-4})
    res = verify_compare.compare(before, [before], [still, other], after_stats)
    assert res["resolved"] is False and res["after"] == 1e-4 and res["severity_after"] == "warning"
    assert res["new_findings"] == ["saturated-activations"]
    gone = verify_compare.compare(before, [before], [], after_stats)   # gone: the number is measured from the stats
    assert gone["resolved"] and gone["after"] == pytest.approx(0.5 / 1.0)


# --- the user's model is never the changed one -----------------------------------------------------------------
def test_verification_changes_a_copy_never_the_users_model(monkeypatch):
    from gradcheck_cli.batches import SyntheticBatches
    from gradcheck_cli.config import Settings
    from gradcheck_cli.losses import resolve
    from gradcheck_cli.pipeline import check_loaded

    model = _mlp(nn.Sigmoid, n=9)
    types = [type(x) for x in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    changed = []
    real = verify_apply.apply_steps

    def spy(net, steps, seed):
        changed.append(net)
        return real(net, steps, seed)

    monkeypatch.setattr(verify, "apply_steps", spy)   # the name verify.run_changed calls
    s = Settings(model="hand-built", verify_fixes="failing", input_shape=(8, 8))
    report = check_loaded(model, SyntheticBatches((8, 8), 0, torch.float32), resolve(None), s, torch.device("cpu"),
                          0.0)
    f = next(f for f in report.findings if f.rule == "vanishing-gradients")
    assert f.verification[0]["change"] and "nn.Sigmoid -> nn.ReLU" in f.verification[0]["change"]
    assert changed and all(net is not model for net in changed)
    assert any(isinstance(x, nn.ReLU) for x in changed[0].modules())      # the copy was changed ...
    assert [type(x) for x in model.modules()] == types                    # ... the user's model was not
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_a_batch_callable_is_replayed_so_the_reruns_see_the_same_batches():
    from gradcheck_cli.batches import CallableBatches

    calls = []

    def draw():
        calls.append(1)
        return torch.randn(4, 3)

    src = CallableBatches(draw, "t.py:draw", torch.float32)
    src.record()
    first = [src.get(i, torch.device("cpu")).args[0].clone() for i in range(3)]
    src.replay()
    again = [src.get(i, torch.device("cpu")).args[0] for i in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again[:3]))
    assert len(calls) == 4                     # the 4th was drawn anew (the changed run went further)
    src.forget()
    src.get(0, torch.device("cpu"))
    assert len(calls) == 5


# --- the real CLI ------------------------------------------------------------------------------------------------
def _json(args, code=1):
    r = runner.invoke(app, ["check", *args, "--format", "json"])
    assert r.exit_code == code, r.output[-2000:]
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, SCHEMA)
    return doc


def test_vanishing_sigmoid_mlp_first_fix_is_verified_in_json_and_text(monkeypatch):
    monkeypatch.chdir(ROOT)
    doc = _json(["examples/vanishing_sigmoid_mlp.py:build", "--verify-fixes"])
    f = doc["findings"][0]
    assert f["rule"] == "vanishing-gradients" and len(f["verification"]) == len(f["fixes"])
    v = f["verification"][0]
    assert v["fix"] == 0 and v["resolved"] is True and v["new_findings"] == []
    assert v["metric"] == "early_late_ratio" and v["before"] < 1e-6 < 1e-2 < v["after"]
    assert "nn.Sigmoid -> nn.ReLU" in v["change"] and "kaiming_normal_" in v["change"]
    assert all(x["change"] is None and x["reason"] for x in f["verification"][1:])   # BatchNorm, residuals
    assert doc["summary"]["exit_code"] == 1 and doc["timings"]["verify_s"] > 0
    assert doc["run"]["verification"]["mode"] == "failing" and doc["settings"]["verify_fixes"] == "failing"
    r = runner.invoke(app, ["check", "--verify-fixes", "examples/vanishing_sigmoid_mlp.py:build", "--no-color"])
    assert r.exit_code == 1, r.output[-2000:]      # the flag before MODEL does not swallow it
    assert "✓ verified: early/late |dL/dy| 1.16e-07 -> " in r.stdout
    assert "changed: 9 modules" in r.stdout and "· not verified: changes the architecture" in r.stdout
    assert "verifying fixes" in r.stdout


def test_healthy_model_is_unaffected(monkeypatch):
    monkeypatch.chdir(ROOT)
    plain = _json(["examples/healthy_mlp.py:build"], code=0)
    doc = _json(["examples/healthy_mlp.py:build", "--verify-fixes=all"], code=0)
    assert all("verification" not in f for f in doc["findings"])
    assert [f["rule"] for f in doc["findings"]] == [f["rule"] for f in plain["findings"]]
    assert doc["layers"] == plain["layers"]


def test_only_failing_findings_unless_all_and_the_config_key(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    args = ["examples/dead_relu.py:build"]
    failing = _json(args + ["--verify-fixes"])
    by_rule = {f["rule"]: f for f in failing["findings"]}
    assert "verification" in by_rule["dead-relus"] and "verification" not in by_rule["unused-parameters"]  # info
    v = by_rule["dead-relus"]["verification"]
    assert v[0]["resolved"] and v[0]["new_findings"] == [] and "biases of 3 modules" in v[0]["change"]
    assert v[1]["resolved"] and v[1]["new_findings"] == ["vanishing-gradients"]   # LeakyReLU: 1% per layer
    every = _json(args + ["--verify-fixes=all"])
    assert all("verification" in f for f in every["findings"])
    cfg = tmp_path / "g.yaml"
    cfg.write_text("verify_fixes: true\n")
    assert "verification" in _json(args + ["--config", str(cfg)])["findings"][0]
    assert "verification" not in _json(args + ["--config", str(cfg), "--verify-fixes=off"])["findings"][0]
    cfg.write_text("verify_fixes: sometimes\n")
    r = runner.invoke(app, ["check", *args, "--config", str(cfg)])
    assert r.exit_code == 2 and "verify_fixes" in r.stderr and "Traceback" not in r.stderr


def test_every_format_shows_the_verification(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    outs = {fmt: tmp_path / f"r.{fmt}" for fmt in ("sarif", "markdown", "junit", "html")}
    r = runner.invoke(app, ["check", "examples/softmax_single_output.py:build", "--loss", "mse", "--verify-fixes",
                            *[a for k, p in outs.items() for a in ("--output", f"{k}:{p}")]])
    assert r.exit_code == 1, r.output[-2000:]
    sarif = json.loads(outs["sarif"].read_text())
    res = sarif["runs"][0]["results"][0]
    assert "✓ verified: parameters without gradient 1,633 -> 0" in res["message"]["text"]
    assert res["properties"]["verification"][0]["resolved"] is True
    assert "nn.Softmax -&gt; nn.Sigmoid" in outs["markdown"].read_text()
    assert "✓ verified" in outs["junit"].read_text()
    assert 'class="verification ok"' in outs["html"].read_text()


def test_depth_chart_before_and_after_in_html(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "r.html"
    r = runner.invoke(app, ["check", "examples/exploding_deep_relu.py:build", "--verify-fixes",
                            "--output", f"html:{out}"])
    assert r.exit_code == 1, r.output[-2000:]
    html = out.read_text()
    assert '<svg class="before-after"' in html and 'polyline class="before"' in html
    assert 'polyline class="after"' in html


# The issue's broken examples: the first suggested fix resolves the finding, with the numbers in the report.
DONE_WHEN = [
    (["examples/vanishing_sigmoid_mlp.py:build"], "vanishing-gradients"),
    (["examples/dead_relu.py:build"], "dead-relus"),
    (["examples/saturated_tanh.py:build"], "saturated-activations"),
    (["examples/exploding_deep_relu.py:build"], "exploding-gradients"),
    ([C + "deep_relu_default_init_20"], "vanishing-gradients"),
    ([C + "plain_relu_cnn_xavier_30"], "vanishing-gradients"),
    (["examples/softmax_single_output.py:build", "--loss", "mse"], "vanishing-gradients"),
    (["examples/train_diverging_mlp.py:build", "--train-steps", "30", "--optimizer",
      "examples/train_diverging_mlp.py:optimizer"], "loss-divergence"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, rule", DONE_WHEN, ids=[a[0].split("/")[-1] for a, _ in DONE_WHEN])
def test_first_fix_resolves_the_issue_examples(args, rule, monkeypatch):
    monkeypatch.chdir(ROOT)
    doc = _json(args + ["--verify-fixes"])
    f = next(f for f in doc["findings"] if f["rule"] == rule)
    v = f["verification"][0]
    assert v["fix"] == 0 and v["change"], v
    assert v["resolved"] is True and v["new_findings"] == [], v
    assert isinstance(v["before"], float) and isinstance(v["after"], float) and v["before"] != v["after"]
    assert doc["summary"]["exit_code"] == 1           # decided by the model as given


@pytest.mark.slow
def test_python_m_end_to_end_with_a_training_fix(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gradcheck_cli", "check", str(ROOT / "examples/train_lr_typo.py:build"),
                        "--train-steps", "20", "--optimizer", "adam", "--lr", "1e-9", "--verify-fixes",
                        "--format", "json"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    f = next(f for f in doc["findings"] if f["rule"] == "update-ratio")
    v = f["verification"][0]
    assert v["resolved"] and v["change"].startswith("learning rate 1.00e-09 -> ")
    assert v["before"] < 1e-6 < v["after"]


def test_python_api_verifies_an_eps_raised_from_zero():
    from gradcheck_cli.api import check
    from gradcheck_cli.errors import InputError

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.norm = nn.LayerNorm(8, eps=0.0)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.norm(self.fc(x) * 0 + 1))   # constant features: 0/0 without an eps

    net = Net()
    report = check(net, verify_fixes=True, input_shape=(4, 8))
    f = next(f for f in report.findings if f.rule == "non-finite")
    v = f.verification[0]
    assert v["change"] == "eps of 1 module (norm) raised to 1.00e-05"
    assert v["resolved"] and v["before"] == 3.0 and v["after"] == 0.0
    assert net.norm.eps == 0.0                                 # the user's module keeps its eps
    assert all(g.verification is None for g in check(net, input_shape=(4, 8)).findings)
    with pytest.raises(InputError, match="verify_fixes"):
        check(net, verify_fixes="sometimes", input_shape=(4, 8))


@pytest.mark.slow
def test_timeout_covers_the_verification(tmp_path):
    (tmp_path / "slow_fix.py").write_text(
        "import time\nimport torch.nn as nn\n\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.layers = nn.Sequential(*[m for _ in range(10) for m in (nn.Linear(16, 16), nn.Sigmoid())],\n"
        "                                    nn.Linear(16, 2))\n\n"
        "    def forward(self, x):\n"
        "        if isinstance(self.layers[1], nn.ReLU):   # only the changed copy is slow\n"
        "            time.sleep(60)\n"
        "        return self.layers(x)\n")
    args = [sys.executable, "-m", "gradcheck_cli", "check", "slow_fix.py:Net", "--timeout", "8"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]                 # the check alone fits in the time
    r = subprocess.run(args + ["--verify-fixes"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 3, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and "Traceback" not in r.stderr


def test_a_changed_copy_that_fails_to_run_is_that_fixs_result_not_the_runs():
    from gradcheck_cli.api import check

    class Picky(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = _mlp(nn.Sigmoid, n=9)

        def forward(self, x):
            if not isinstance(self.layers[1], nn.Sigmoid):
                raise RuntimeError("this model only works with sigmoids")
            return self.layers(x)

    report = check(Picky(), verify_fixes=True, input_shape=(8, 8))
    f = next(f for f in report.findings if f.rule == "vanishing-gradients")
    v = f.verification[0]
    assert v["resolved"] is False and "only works with sigmoids" in v["error"] and v["after"] is None
    assert report.exit_code == 1
