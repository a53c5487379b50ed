"""Verdicts a CI gate can trust (issue 9): every failure class end to end on a real model, each with a
healthy twin that must stay clean. Unit tests of the new rule logic on hand-built statistics at the end."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn as nn

from gradcheck_cli import check, stats as S
from gradcheck_cli.config import Settings
from gradcheck_cli.findings import Severity
from gradcheck_cli.pipeline import run_check
from gradcheck_cli.rules import get_rule
from gradcheck_cli.stats import LayerStats, RunStats

from conftest import EXAMPLES, ROOT

CALIB = str(ROOT / "benchmarks" / "calibration_models.py")
HF = str(ROOT / "benchmarks" / "hf_models.py")


def run(spec: str, **kw):
    return run_check(Settings(model=spec, device="cpu", **kw))


def failing(report) -> list:
    """Findings at warning or above, as (rule, severity)."""
    return [(f.rule, f.severity) for f in report.findings if f.severity.rank >= 2]


def only(report, rule: str):
    fs = [f for f in report.findings if f.rule == rule]
    assert len(fs) == 1, [(f.rule, f.message) for f in report.findings]
    return fs[0]


# --------------------------------------------------------------------------------------------------------
# 1. No learning signal at all: an error, located, with the cause's own fix
# --------------------------------------------------------------------------------------------------------

def test_relu_after_the_output_layer_is_an_error_with_the_right_fix():
    r = run(f"{EXAMPLES}/relu_after_output.py:build")
    f = only(r, "dead-relus")
    assert f.severity is Severity.ERROR and r.exit_code == 1
    assert f.layer == "2" and f.evidence["cause"] == "dead-relu"
    assert f.evidence["units"] == 3 and f.evidence["dead_units"]["2"] == {"dead": 3, "units": 3}
    assert "No learning signal" in f.message
    assert "Remove the ReLU after the last Linear" in f.fixes[0] and "negative" in f.fixes[0]
    assert not [x for x in r.findings if x.rule == "unused-parameters" and x.severity.rank >= 2], \
        "the cut is reported once, not again as unused parameters"


def test_relu_after_output_healthy_twin():
    assert failing(run(f"{EXAMPLES}/relu_after_output.py:build_fixed")) == []


def test_softmax_over_a_size_one_dimension_is_an_error():
    r = run(f"{EXAMPLES}/softmax_single_output.py:build", batch=f"{EXAMPLES}/softmax_single_output.py:batch")
    f = only(r, "vanishing-gradients")
    assert f.severity is Severity.ERROR
    assert f.evidence["cause"] == "softmax" and f.layer == "softmax"
    assert "sigmoid" in f.fixes[0] and "2 outputs" in f.fixes[0]
    twin = run(f"{EXAMPLES}/softmax_single_output.py:build_fixed", batch=f"{EXAMPLES}/softmax_single_output.py:batch")
    assert failing(twin) == []


@pytest.mark.parametrize("name", ["round_in_forward", "zero_mask_multiply"])
def test_gradient_killed_in_forward_code_is_an_error(name):
    r = run(f"{CALIB}:{name}")
    f = only(r, "vanishing-gradients")
    assert f.severity is Severity.ERROR and f.evidence["cause"] == "other"
    assert f.evidence["learning_layers"] == ["head"]
    assert "between" in f.message and "`head`" in f.message
    assert any("round" in x and "multiplication by an all-zero tensor" in x for x in f.fixes)
    assert not [x for x in r.findings if x.rule == "unused-parameters" and x.severity.rank >= 2]


# --------------------------------------------------------------------------------------------------------
# 2. Zero gradients that are not defects: info, never a warning, never "freeze"
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [f"{EXAMPLES}/rezero.py:build", f"{CALIB}:zero_init_residual_resnet",
                                  f"{CALIB}:zero_init_head"])
def test_zero_init_downstream_scale_is_info(spec):
    r = run(spec)
    assert failing(r) == [] and r.exit_code == 0
    infos = [f for f in r.findings if f.severity is Severity.INFO]
    assert infos and all("step 0 only" in f.message for f in infos)
    for f in infos:
        assert not any("requires_grad_(False)" in fix for fix in f.fixes)


def test_zero_scale_recognition_names_the_scales():
    r = run(f"{CALIB}:zero_init_residual_resnet")
    (f,) = [f for f in r.findings if f.rule == "unused-parameters"]
    assert f.evidence["zero_scales"] == [f"blocks.{i}.bn2" for i in range(4)]


# --------------------------------------------------------------------------------------------------------
# 3. Multi-output models: the default loss covers every output
# --------------------------------------------------------------------------------------------------------

def test_multi_output_default_loss_covers_every_output():
    r = run(f"{EXAMPLES}/multi_output.py:Net")
    assert r.findings == [] and r.exit_code == 0
    loss = r.settings["loss"]
    assert loss.startswith("sum over 3 outputs")
    for out in ("output[0]", "output[1].aux_logits", "output[1].boxes"):
        assert out in loss
    assert r.run["loss_outputs"] == ["output[0]", "output[1].aux_logits", "output[1].boxes"]


def test_multi_output_provided_target_applies_where_it_fits():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(8, 16)
            self.cls = nn.Linear(16, 5)
            self.reg = nn.Linear(16, 2)

        def forward(self, x):
            h = torch.relu(self.body(x))
            return {"cls": self.cls(h), "reg": self.reg(h)}

    x, y = torch.randn(6, 8), torch.randint(0, 5, (6,))
    r = check(TwoHeads(), (x, y), device="cpu")
    assert r.findings == []
    assert "cross-entropy on cls" in r.settings["loss"] and "reg (synthetic targets)" in r.settings["loss"]
    # targets given per output (a dict keyed like the output) are used for each
    r = check(TwoHeads(), (x, {"cls": y, "reg": torch.randn(6, 2)}), device="cpu")
    assert "synthetic" not in r.settings["loss"] and "mse on reg" in r.settings["loss"]


# --------------------------------------------------------------------------------------------------------
# 4. Dead units vs correlation collapse vs tiny layers
# --------------------------------------------------------------------------------------------------------

def test_tiny_partly_dead_layers_are_not_judged():
    dead = get_rule("dead-relus")
    layers = [LayerStats(index=0, name="se.reduce", type="Conv2d", role=S.PARAM, bias_mean=0.0),
              LayerStats(index=1, name="se.act", type="ReLU", role=S.ACTIVATION, activation=S.RELU, units=4,
                         dead_units=2)]
    assert dead.check(RunStats(layers=layers, steps=3, losses=[1.0] * 3)) == []


def test_collapsed_deep_plain_relu_net_is_info_not_dead():
    """A healthy 30-layer plain ReLU MLP (He init): about half the late units off on a batch of 8, near zero,
    the examples' vectors nearly parallel. Info (correlation collapse), exit 0."""
    r = run(f"{EXAMPLES}/relu_collapse.py:build")
    assert failing(r) == [] and r.exit_code == 0
    f = only(r, "dead-relus")
    assert f.severity is Severity.INFO and "correlation collapse, not death" in f.message
    worst = next(lv for lv in r.layers if lv["name"] == f.layer)
    assert worst["off_units"] >= worst["units"] / 2 and worst["dead_units"] < worst["units"] / 2
    assert worst["coherence"] >= S.VARIED_COHERENCE and -S.DEAD_MARGIN < worst["off_margin_median"] < 0


def test_collapsed_net_twin_with_negative_biases_is_dead():
    """The same MLP with every bias at -2: really dead, and the signal is cut: an error."""
    r = run(f"{CALIB}:plain_relu_mlp_he_30_bias_minus_2")
    f = only(r, "dead-relus")
    assert f.severity is Severity.ERROR and "No learning signal" in f.message
    assert any("-2" in x and "bias" in x for x in f.fixes)


@pytest.mark.slow
def test_squeeze_excite_bottlenecks_are_not_dead():
    """SE bottlenecks of 4 units off on a few pooled examples: no finding at all (several seeds)."""
    for seed in (0, 1, 2):
        r = run(f"{CALIB}:se_resnet", seed=seed)
        assert [f for f in r.findings if f.rule == "dead-relus"] == [], seed
        assert failing(r) == [], seed


def test_squeeze_excite_twin_with_dead_bottlenecks_warns():
    """The same SE-ResNet with the bottlenecks' biases at -20: every SE unit far below zero: dead."""
    r = run(f"{CALIB}:se_resnet_dead_se")
    f = only(r, "dead-relus")
    assert f.severity is Severity.WARNING
    assert set(f.evidence["dead_units"]) == {f"blocks.{i}.se.relu" for i in range(4)}
    assert all(m < -S.DEAD_MARGIN for m in f.evidence["off_margin_median"].values())


def test_units_killed_by_a_large_step_are_dead_not_collapse():
    """One SGD step with lr=50 leaves a shallow layer's examples alike (huge upstream weights): in a shallow
    layer that is death, not depth's correlation collapse."""
    r = run(f"{CALIB}:dead_relu_large_lr_step")
    f = only(r, "dead-relus")
    assert f.severity is Severity.WARNING and "mostly dead" in f.message


# --------------------------------------------------------------------------------------------------------
# 5. Moderate but steady decay or growth
# --------------------------------------------------------------------------------------------------------

def test_nielsen_sigmoid_net_is_vanishing():
    r = run(f"{CALIB}:nielsen_sigmoid_4hidden_mnist_like", batch=f"{CALIB}:nielsen_batch")
    f = only(r, "vanishing-gradients")
    assert f.severity is Severity.WARNING and f.layer == "0"
    assert f.evidence["early_late_ratio"] < 0.3 and "steady_threshold" in f.evidence
    assert "Nielsen" in f.message


@pytest.mark.parametrize("name", ["nielsen_tanh_xavier_mnist_like", "tanh_mlp_xavier_8"])
def test_nielsen_healthy_twins(name):
    extra = {"batch": f"{CALIB}:nielsen_batch"} if "nielsen" in name else {}
    assert failing(run(f"{CALIB}:{name}", **extra)) == []


def test_short_vanilla_rnn_with_amplifying_w_hh_is_exploding_through_time():
    r = run(f"{EXAMPLES}/rnn_exploding.py:Net", input_shape=(8, 20, 16))
    f = only(r, "exploding-gradients")
    assert f.evidence["time_grad_ratio"] < 1e3, "the total is below the 1e3 threshold..."
    assert f.evidence["weight_hh_sigma_max"] > 1 and f.evidence["per_step_factor"] > 1.05
    assert "per step" in f.message


def test_short_rnn_healthy_twin():
    """The same nn.RNN with an orthogonal W_hh of gain 1.2 under ReLU decays per step: not exploding."""
    r = run(f"{CALIB}:relu_rnn_orthogonal_1_2", input_shape=(8, 20, 8))
    assert "exploding-gradients" not in [f.rule for f in r.findings]


# --------------------------------------------------------------------------------------------------------
# 7. Scale-dependent thresholds: an absolute norm alone is context
# --------------------------------------------------------------------------------------------------------

def test_plain_cnn_with_oversized_init_still_fails_on_the_norm():
    r = run(f"{CALIB}:plain_cnn_init_x2")
    f = only(r, "exploding-gradients")
    assert f.severity is Severity.WARNING and f.evidence["supported_by"] == "oversized weights"


# --------------------------------------------------------------------------------------------------------
# 8. Fix texts that fit the architecture; message numbers
# --------------------------------------------------------------------------------------------------------

def test_gate_sigmoids_are_never_to_be_replaced():
    sat = get_rule("saturated-activations")
    layers = [LayerStats(index=0, name="blocks.0.se.reduce", type="Conv2d", role=S.PARAM),
              LayerStats(index=1, name="blocks.0.se.gate", type="Sigmoid", role=S.ACTIVATION,
                         activation=S.SIGMOID, saturated_fraction=0.9)]
    (f,) = sat.check(RunStats(layers=layers, steps=3, losses=[1.0] * 3))
    assert f.evidence["gates"] == ["blocks.0.se.gate"]
    assert not any("Replace" in fix for fix in f.fixes)
    assert any("keep the sigmoid" in fix for fix in f.fixes)


def test_growth_factors_are_formatted():
    from gradcheck_cli.rules._common import x_factor

    assert x_factor(1407267.09) == "x1.41e+06"
    assert x_factor(0.0333) == "x0.0333"
    assert x_factor(math.inf) == "an unbounded factor"


# --------------------------------------------------------------------------------------------------------
# 9. Bugs found in review
# --------------------------------------------------------------------------------------------------------

class _Drawing(nn.Module):
    """Draws from numpy and Python's random in forward (augmentation-style noise)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        import numpy as np

        noise = torch.as_tensor(np.random.randn(*x.shape), dtype=x.dtype) * random.random()
        return self.fc(x + noise)


def test_runs_are_reproducible_for_models_drawing_from_numpy_and_random():
    import numpy as np

    np.random.seed(123)
    random.seed(123)
    before = (np.random.get_state()[1].copy(), random.getstate())
    reports = []
    for _ in range(2):
        torch.manual_seed(0)
        model, x = _Drawing(), torch.randn(5, 8)
        np.random.rand(), random.random()   # the caller's generators are somewhere else each time
        reports.append(check(model, x, device="cpu", seed=3))
    a, b = reports
    assert a.run["losses"] == b.run["losses"] and a.run["total_grad_norm"] == b.run["total_grad_norm"]
    np.random.seed(123)
    random.seed(123)
    check(_Drawing(), torch.randn(5, 8), device="cpu", seed=3)
    after = (np.random.get_state()[1], random.getstate())
    assert (before[0] == after[0]).all() and before[1] == after[1], "the caller's generators are restored"


def _named(report) -> list[str]:
    return [l["name"] for l in report.layers]


def test_torch_compile_and_data_parallel_prefixes_do_not_leak():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(8, 16), nn.Sigmoid(), nn.Linear(16, 3))
    plain = check(inner, torch.randn(4, 8), device="cpu")
    for wrapped in (torch.compile(inner), nn.DataParallel(inner), nn.DataParallel(torch.compile(inner))):
        r = check(wrapped, torch.randn(4, 8), device="cpu")
        assert _named(r) == _named(plain)
        assert not any(n.startswith(("_orig_mod", "module")) for n in _named(r))
        assert any("checked the model inside" in n for n in r.notes)


def test_ignores_and_baselines_written_with_wrapper_prefixes_still_apply():
    from gradcheck_cli.baseline import Ignore, _key
    from gradcheck_cli.findings import Finding

    f = Finding(rule="dead-relus", code="GC105", severity=Severity.WARNING, layer="encoder.1", message="m")
    assert Ignore(reason="r", layer="_orig_mod.encoder.*").matches(f, "m.py:build")
    assert Ignore(reason="r", layer="module.encoder.1").matches(f, "m.py:build")
    assert not Ignore(reason="r", layer="module.decoder.*").matches(f, "m.py:build")
    assert _key("m.py:b", "GC105", "module._orig_mod.encoder.1", None) == _key("m.py:b", "GC105", "encoder.1", None)


# --------------------------------------------------------------------------------------------------------
# 6. initial-loss (GC107): unit tests on statistics
# --------------------------------------------------------------------------------------------------------

INIT = get_rule("initial-loss")


def loss_stats(first: float, classes: int = 1000, kind: str = "cross-entropy") -> RunStats:
    head = LayerStats(index=0, name="lm_head", type="Linear", role=S.PARAM, weight_rms=0.9, fan_in=64, fan_out=classes)
    return RunStats(layers=[head], steps=3, losses=[first, first, first], loss_kind=kind, loss_classes=classes)


def test_initial_loss_fires_on_confidently_wrong_logits():
    (f,) = INIT.check(loss_stats(38.9))
    assert f.severity is Severity.WARNING and f.layer == "lm_head"
    assert f.evidence["expected"] == pytest.approx(math.log(1000))
    assert f.evidence["ratio"] == pytest.approx(38.9 / math.log(1000))
    assert "ln 1,000" in f.message and "38.9" in f.message


@pytest.mark.parametrize("first", [6.9, 7.4, 13.0])
def test_initial_loss_silent_near_ln_c(first):
    assert INIT.check(loss_stats(first)) == []


def test_initial_loss_judges_only_losses_with_a_reference():
    assert INIT.check(loss_stats(99.0, kind="mse")) == []
    assert INIT.check(loss_stats(99.0, kind="model")) == []
    assert INIT.check(loss_stats(float("nan"))) == []
    (f,) = INIT.check(loss_stats(1.6, classes=2, kind="bce-with-logits"))
    assert "binary" in f.message
    assert INIT.check(loss_stats(30.0), {"factor": 5.0}) == []


def test_initial_loss_end_to_end_on_a_classifier_with_huge_logits():
    class Hot(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 32)
            self.head = nn.Linear(32, 10)
            nn.init.normal_(self.head.weight, std=3.0)

        def forward(self, x):
            return self.head(torch.relu(self.fc(x)))

    r = check(Hot(), torch.randn(8, 16), device="cpu")
    assert [f.rule for f in r.findings if f.severity.rank >= 2] == ["initial-loss"]
    assert r.run["loss_classes"] == 10 and r.run["loss_kind"] == "cross-entropy"
    twin = Hot()
    nn.init.normal_(twin.head.weight, std=0.02)
    assert check(twin, torch.randn(8, 16), device="cpu").findings == []


# --------------------------------------------------------------------------------------------------------
# Real Hugging Face architectures (random init from small configs): the ones that used to false-alarm
# --------------------------------------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")


def _hf(name: str):
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import hf_models

    extra = {}
    if name not in hf_models.ARCHS:   # the deliberately broken ones: token ids
        return run(f"{HF}:{name}")
    if hf_models.input_shape(name):
        extra["input_shape"] = hf_models.input_shape(name)
    if hf_models.needs_batch(name):
        extra["batch"] = f"{HF}:{hf_models.needs_batch(name)}"
    return run(f"{HF}:{name}", **extra)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "regnet", "dinov2", "deit", "llama"])
def test_stock_architectures_that_used_to_false_alarm_are_clean(name):
    assert failing(_hf(name)) == []


@pytest.mark.slow
def test_llama_with_huge_init_fails_initial_loss():
    f = only(_hf("llama_init_1"), "initial-loss")
    assert f.evidence["initial_loss"] > 3 * math.log(1000)   # 26.7 on this config (3.9x ln V)


@pytest.mark.slow
def test_llama_with_tiny_init_has_negligible_weight_gradients():
    r = _hf("llama_init_1e_5")
    (f,) = [x for x in r.findings if x.rule == "vanishing-gradients" and x.severity.rank >= 2]
    assert "tiny_weights" in f.evidence
    assert any("q_proj" in n for n in f.evidence["relative_speed"])


# --------------------------------------------------------------------------------------------------------
# Gradient checkpointing (reentrant and not): counted once, gradients measured
# --------------------------------------------------------------------------------------------------------

class _Checkpointed(nn.Module):
    def __init__(self, reentrant: bool):
        super().__init__()
        self.reentrant = reentrant
        self.stem = nn.Linear(16, 32)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(32, 32), nn.GELU()) for _ in range(3))
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        x = self.stem(x)
        for b in self.blocks:
            x = x + checkpoint(b, x, use_reentrant=self.reentrant)
        return self.head(x)


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_is_measured_once(reentrant):
    torch.manual_seed(0)
    model = _Checkpointed(reentrant)
    plain = _Checkpointed(reentrant)
    plain.load_state_dict(model.state_dict())
    plain.forward = lambda x: plain.head(_unrolled(plain, x))   # the same model without checkpointing
    x = torch.randn(8, 16)
    r = check(model, x, device="cpu")
    assert r.findings == []
    assert all(l["calls"] == 1 for l in r.layers if l["name"].startswith("blocks"))
    ref = check(plain, x, device="cpu")
    for a, b in zip(r.layers, ref.layers):
        assert a["name"] == b["name"]
        if b["grad_norm"] is not None:
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    assert all(p.grad is None for p in model.parameters()), "the user's .grad is never written"


def _unrolled(m, x):
    x = m.stem(x)
    for b in m.blocks:
        x = x + b(x)
    return x


# --------------------------------------------------------------------------------------------------------
# 8 (continued). float16 overflow and eps = 0 are named; tiny BatchNorm gammas are named
# --------------------------------------------------------------------------------------------------------

class _HalfOverflow(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 10)
        nn.init.normal_(self.fc.weight, std=3000.0)

    def forward(self, x):
        return self.fc(x)


class _ZeroEps(nn.Module):
    def __init__(self, eps: float, constant_rows: bool = True):
        super().__init__()
        self.constant_rows = constant_rows
        self.fc = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16, eps=eps)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = self.fc(x)
        if self.constant_rows:   # e.g. padding positions whose features are all equal: variance 0
            h = h * 0.0
        return self.head(self.norm(h))


def test_fp16_overflow_names_fp16_and_float32_loss():
    r = check(_HalfOverflow().half(), torch.randn(8, 16), device="cpu")
    f = only(r, "non-finite")
    assert "65504" in f.fixes[0] and "float32" in f.fixes[0]
    twin = check(_HalfOverflow(), torch.randn(8, 16), device="cpu")   # the same weights in float32
    assert "65504" not in " ".join(x for f in twin.findings for x in f.fixes)


def test_norm_with_zero_eps_is_named_with_the_config_field():
    f = only(check(_ZeroEps(0.0), torch.randn(8, 16), device="cpu"), "non-finite")
    assert "eps=0" in f.fixes[0] and "layer_norm_eps" in f.fixes[0] and "`norm`" in f.fixes[0]
    twin = check(_ZeroEps(1e-5, constant_rows=False), torch.randn(8, 16), device="cpu")
    assert failing(twin) == [], "the healthy twin"


class _TinyGammaCNN(nn.Module):
    """BatchNorm gammas drawn from N(0, 0.02), as some libraries' init does: activations vanish forward."""

    def __init__(self, gamma_std: float | None):
        super().__init__()
        layers, c = [], 3
        for _ in range(8):
            bn = nn.BatchNorm2d(8, eps=1e-3)
            if gamma_std is not None:
                nn.init.normal_(bn.weight, std=gamma_std)
            layers += [nn.Conv2d(c, 8, 3, padding=1, bias=False), bn, nn.ReLU()]
            c = 8
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def test_tiny_batchnorm_gammas_are_named():
    torch.manual_seed(0)
    r = check(_TinyGammaCNN(0.02), torch.randn(4, 3, 16, 16), device="cpu")
    fired = [f for f in r.findings if f.rule == "vanishing-gradients" and f.severity.rank >= 2]
    assert fired, [(f.rule, f.severity.value, f.message[:80]) for f in r.findings]
    assert any("gamma" in fix for f in fired for fix in f.fixes)
    assert failing(check(_TinyGammaCNN(None), torch.randn(4, 3, 16, 16), device="cpu")) == []


def test_decay_confined_to_scaled_down_branches_is_context():
    """PoolFormer/ConvNeXt-style LayerScale: branch layers get 1e-5 of the stream's signal by design, while
    the stem on the stream gets all of it: info, not vanishing. A plain stack whose every early layer is
    starved still warns."""
    van = get_rule("vanishing-gradients")

    def stats(stem: float) -> RunStats:
        layers = [LayerStats(index=0, name="stem", type="Conv2d", role=S.PARAM, output_grad_norm=stem)]
        layers += [LayerStats(index=i, name=f"blocks.{i}.mlp", type="Linear", role=S.PARAM,
                              output_grad_norm=1e-5 if i < 6 else 1.0) for i in range(1, 11)]
        layers += [LayerStats(index=11, name="head", type="Linear", role=S.PARAM, output_grad_norm=1.0)]
        return RunStats(layers=layers, steps=3, losses=[1.0] * 3)

    (f,) = van.check(stats(stem=0.5))
    assert f.severity is Severity.INFO and f.evidence["best_early_ratio"] == pytest.approx(0.5)
    (f,) = van.check(stats(stem=1e-5))
    assert f.severity is Severity.WARNING
