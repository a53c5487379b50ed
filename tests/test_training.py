"""The training rehearsal (--train-steps) end to end: the driver on a deep copy (the user's model left
exactly as given), optimizers and factories, precision, the CLI and config, every format, the timeout,
and the bundled examples (broken ones fire their rule, healthy twins stay silent)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from gradcheck_cli.cli import app  # noqa: E402
from gradcheck_cli.config import Settings  # noqa: E402
from gradcheck_cli.errors import InputError, UserCodeError  # noqa: E402
from gradcheck_cli.pipeline import run_check  # noqa: E402

from conftest import EXAMPLES, ROOT  # noqa: E402

runner = CliRunner()
REPORT_SCHEMA = json.loads((ROOT / "gradcheck_cli" / "report" / "schema.json").read_text())

TINY = """
import torch
import torch.nn as nn


def build():
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def with_model(model):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return opt, torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)


def head_only(model):
    return torch.optim.SGD(model[2].parameters(), lr=0.1)


def not_an_optimizer(params):
    return 42


def raises(params):
    raise RuntimeError("factory exploded")
"""


def check(spec: str, **kw):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return run_check(Settings(model=spec, **kw))


@pytest.fixture
def tiny(write_file) -> Path:
    return write_file("tiny.py", TINY)


def rehearse_direct(model, steps=6, **kw):
    from gradcheck_cli.batches import make_batch_source
    from gradcheck_cli.losses import resolve
    from gradcheck_cli.measure.training import TrainSettings, rehearse

    source = make_batch_source(None, (8, 8), model, 0)
    return rehearse(model, source, resolve(None), train=TrainSettings(steps=steps, **kw), seed=0,
                    device=torch.device("cpu"))


# -- the driver -----------------------------------------------------------------------------------------------

def test_user_model_is_left_exactly_as_given():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()]
    traj, _ = rehearse_direct(model, steps=5, optimizer="sgd", lr=0.5)
    assert traj.steps == 5
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert hooks == [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()]
    assert any(r and r > 0 for rs in traj.update_ratios.values() for r in rs)   # the copy did change


def test_synthetic_batches_are_learnable():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
    traj, _ = rehearse_direct(model, steps=60, optimizer="adam", lr=3e-2)
    # fixed targets per synthetic input: the 4 batches are memorised (random targets would stay ~ln 4)
    assert max(traj.losses[-4:]) < 0.2 * traj.losses[0], traj.losses


def test_optimizer_factories(tiny):
    from gradcheck_cli.measure.optim import build_optimizer

    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    opt, sched, desc, lr = build_optimizer(f"{tiny}:sgd", None, model)
    assert isinstance(opt, torch.optim.SGD) and sched is None and lr == 0.1
    opt, sched, desc, lr = build_optimizer(f"{tiny}:with_model", 0.02, model)   # called with the model
    assert sched is not None and lr == 0.02 and desc.endswith("(lr 0.02)")
    opt, _, desc, lr = build_optimizer("adamw", None, model)
    assert isinstance(opt, torch.optim.AdamW) and lr == 1e-3
    with pytest.raises(InputError, match="not a torch.optim.Optimizer"):
        build_optimizer(f"{tiny}:not_an_optimizer", None, model)
    with pytest.raises(UserCodeError, match="factory exploded"):
        build_optimizer(f"{tiny}:raises", None, model)
    with pytest.raises(InputError, match="unknown optimizer"):
        build_optimizer("rmsprop", None, model)


def test_parameters_missing_from_the_optimizer_are_named(tiny):
    r = check(f"{tiny}:build", train_steps=4, optimizer=f"{tiny}:head_only")
    assert r.training["params_not_in_optimizer"] == ["0.weight", "0.bias"]
    (f,) = [f for f in r.findings if f.rule == "update-ratio"]
    assert f.layer == "0" and "0.weight" in f.message


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_rehearsal(precision):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    traj, _ = rehearse_direct(model, steps=4, optimizer="adam", precision=precision)
    assert traj.steps == 4 and traj.precision == precision and all(math.isfinite(v) for v in traj.losses)
    assert set(traj.flushed_to_zero) == {"0", "2"} and all(0 <= v <= 1 for v in traj.flushed_to_zero.values())
    if precision == "fp16":
        assert len(traj.loss_scales) == 4 and traj.loss_scales[0] == 65536.0
    else:
        assert traj.loss_scales == []


def test_fp16_overflow_is_a_skipped_step_not_a_nan_finding():
    class Big(nn.Module):   # its fp16 gradients overflow at the initial loss scale (65536)
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(x) * 3e3

    torch.manual_seed(0)
    traj, _ = rehearse_direct(Big(), steps=4, optimizer="sgd", lr=1e-6, precision="fp16")
    assert traj.skipped_steps and traj.skipped_steps[0] == 0 and traj.nonfinite_step is None
    assert traj.loss_scales[1] < traj.loss_scales[0]


def test_nan_onset_is_diagnosed_and_stops_the_run():
    from gradcheck_cli.measure.training import TrainSettings  # noqa: F401

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            return torch.log(torch.softmax(self.fc(x) * 4.0, -1))

    torch.manual_seed(0)
    traj, _ = rehearse_direct(Net(), steps=40, optimizer="sgd", lr=50.0)
    assert traj.nonfinite_step is not None and traj.nonfinite_step > 0
    assert traj.steps == traj.nonfinite_step + 1 and traj.stopped.startswith("NaN/Inf")
    assert traj.nonfinite_first in ("loss", "gradient", "weight")
    assert traj.nonfinite_forward and "log()" in traj.nonfinite_forward


# -- CLI, config, formats -------------------------------------------------------------------------------------

def test_cli_json_training_section_validates(tiny, tmp_path):
    import jsonschema

    out = tmp_path / "r.json"
    r = runner.invoke(app, ["check", f"{tiny}:build", "--train-steps", "5", "--optimizer", "sgd", "--lr", "0.01",
                            "-o", f"json:{out}"])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, REPORT_SCHEMA)
    t = doc["training"]
    assert t["steps_run"] == 5 and [s["step"] for s in t["steps"]] == list(range(5))
    assert t["optimizer"].startswith("sgd (lr 0.01") and doc["settings"]["train_steps"] == 5
    assert all(isinstance(s["update_ratio_max"], float) for s in t["steps"])
    assert "Training rehearsal" in r.output and "loss" in r.output


def test_without_train_steps_the_report_has_no_training_section(tiny):
    r = runner.invoke(app, ["check", f"{tiny}:build", "-f", "json"])
    assert r.exit_code == 0 and "training" not in json.loads(r.stdout)


@pytest.mark.parametrize("args, message", [
    (["--lr", "-1", "--train-steps", "2"], "--lr must be a positive number"),
    (["--optimizer", "rmsprop", "--train-steps", "2"], "unknown --optimizer"),
    (["--train-steps", "-1"], "--train-steps"),
    (["--precision", "fp8", "--train-steps", "2"], "fp8"),
])
def test_bad_training_options_are_one_line_errors(tiny, args, message):
    r = runner.invoke(app, ["check", f"{tiny}:build", *args])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and message in r.output


def test_config_keys(tiny, write_file):
    cfg = write_file("gc.yaml", "train_steps: 3\noptimizer: adamw\nlr: 0.002\nprecision: bf16\n")
    r = runner.invoke(app, ["check", f"{tiny}:build", "--config", str(cfg), "-f", "json"])
    assert r.exit_code == 0, r.output
    t = json.loads(r.stdout)["training"]
    assert (t["steps_run"], t["lr"], t["precision"]) == (3, 0.002, "bf16") and t["optimizer"].startswith("adamw")
    bad = write_file("bad.yaml", "lr: fast\n")
    r = runner.invoke(app, ["check", f"{tiny}:build", "--config", str(bad)])
    assert r.exit_code == 2 and "key 'lr'" in r.output


def test_timeout_covers_the_rehearsal(tiny):
    r = runner.invoke(app, ["check", f"{tiny}:build", "--train-steps", "100000000", "--timeout", "3"])
    assert r.exit_code == 3, r.output
    assert "error:" in r.output and "--timeout" in r.output and "Traceback" not in r.output


def test_progress_bar_only_on_a_terminal_after_a_while():
    from rich.console import Console

    from gradcheck_cli.progress import TrainProgress

    buf = io.StringIO()
    p = TrainProgress(Console(file=buf, force_terminal=True, width=60), show_after=0.0)
    for i in range(1, 4):
        p(i, 3)
    p.close()
    assert "training rehearsal" in buf.getvalue()
    quiet = io.StringIO()
    p = TrainProgress(Console(file=quiet, force_terminal=False), show_after=0.0)
    p(1, 3)
    p.close()
    assert quiet.getvalue() == ""
    late = io.StringIO()
    p = TrainProgress(Console(file=late, force_terminal=True), show_after=60.0)
    p(1, 3)
    p.close()
    assert late.getvalue() == ""


@pytest.fixture(scope="module")
def diverging():
    ex = EXAMPLES / "train_diverging_mlp.py"
    return check(f"{ex}:build", train_steps=30, optimizer=f"{ex}:optimizer")


@pytest.mark.slow
def test_trajectory_in_every_format(diverging):
    from gradcheck_cli import report as renderers

    def render(fmt: str) -> str:
        buf = io.StringIO()
        renderers.render(diverging, fmt, buf, color=False, width=60)
        return buf.getvalue()

    (f,) = [f for f in diverging.findings if f.rule == "loss-divergence"]
    onset = f.evidence["onset_step"]
    text = render("text")
    assert "Training rehearsal" in text and any(c in text for c in "▁▂▃▄▅▆▇█")
    assert all(len(line) <= 60 for line in text.splitlines() if "▁" in line or "█" in line)
    md = render("markdown")
    assert "Training rehearsal" in md and f"loss-divergence from step {onset}" in md
    html = render("html")
    assert 'class="trajectory"' in html and "<polyline" in html and f"onset at step {onset}" in html
    sarif = json.loads(render("sarif"))
    msgs = [res["message"]["text"] for run in sarif["runs"] for res in run["results"]
            if res["properties"]["rule"] == "loss-divergence"]
    assert msgs and f"step {onset}" in msgs[0]
    assert f"step {onset}" in render("junit")
    doc = json.loads(render("json"))
    assert {"rule": "loss-divergence", "layer": None, "step": onset} in doc["training"]["onsets"]


# -- the bundled examples -------------------------------------------------------------------------------------

def ex(name: str) -> str:
    return str(EXAMPLES / name)


BROKEN = [
    ("train_diverging_mlp.py:build", {"train_steps": 30, "optimizer": ex("train_diverging_mlp.py:optimizer")},
     "loss-divergence"),
    ("train_update_too_large.py:build", {"train_steps": 20, "optimizer": "adam", "lr": 0.5}, "update-ratio"),
    ("train_lr_typo.py:build", {"train_steps": 20, "optimizer": "adam", "lr": 1e-9}, "update-ratio"),
    ("train_missing_params.py:build", {"train_steps": 10, "optimizer": ex("train_missing_params.py:optimizer")},
     "update-ratio"),
    ("train_dying_relu.py:build", {"train_steps": 30, "optimizer": "adam", "lr": 0.05}, "dead-relus"),
    ("train_nan_onset.py:Net", {"train_steps": 30, "optimizer": ex("train_nan_onset.py:optimizer"),
                                "loss": ex("train_nan_onset.py:nll")}, "non-finite"),
    ("train_grad_spikes.py:build", {"train_steps": 30, "optimizer": ex("train_grad_spikes.py:optimizer")},
     "exploding-gradients"),
]

HEALTHY = [
    ("train_healthy_mlp.py:build", {"train_steps": 60, "optimizer": ex("train_healthy_mlp.py:optimizer")}),
    ("train_healthy_cnn.py:build", {"train_steps": 30, "optimizer": "adam", "lr": 1e-3}),
    ("train_healthy_transformer.py:build", {"train_steps": 30, "optimizer": "adamw", "lr": 3e-4,
                                            "input_shape": (4, 32)}),
]


@pytest.mark.slow
@pytest.mark.parametrize("spec, kw, rule", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_training_example_fires_with_its_step(spec, kw, rule):
    r = check(ex(spec), **kw)
    step0 = check(ex(spec))   # the step-0 check alone does not see it
    assert rule not in {f.rule for f in step0.findings if f.severity.rank >= 2}
    hits = [f for f in r.findings if f.rule == rule and f.severity.rank >= 2]
    assert hits, [(f.rule, f.message) for f in r.findings]
    assert isinstance(hits[0].evidence.get("onset_step"), int) and "step" in hits[0].message
    assert r.exit_code == 1


@pytest.mark.slow
@pytest.mark.parametrize("spec, kw", HEALTHY, ids=[h[0] for h in HEALTHY])
def test_healthy_training_twin_is_silent(spec, kw):
    r = check(ex(spec), **kw)
    assert [(f.rule, f.message) for f in r.findings if f.severity.rank >= 2] == []
    assert r.training["steps_run"] == kw["train_steps"]
    if spec.startswith("train_healthy_mlp"):   # learns to ~0 loss with SGD + momentum
        losses = [s["loss"] for s in r.training["steps"]]
        assert min(losses) < 0.01 * losses[0]
