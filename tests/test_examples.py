"""End to end on the bundled examples (in-process through pipeline.run_check: one torch import)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from gradcheck_cli.config import Settings  # noqa: E402
from gradcheck_cli.findings import Severity  # noqa: E402
from gradcheck_cli.pipeline import run_check  # noqa: E402

from conftest import EXAMPLES  # noqa: E402

pytestmark = pytest.mark.slow


def check(spec: str, **kw):
    # Seeded and forked so the outcome does not depend on which tests ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return run_check(Settings(model=spec, **kw))


def failing(report):
    return [f for f in report.findings if f.severity in (Severity.WARNING, Severity.ERROR)]


BROKEN = [
    # (spec, extra settings, rule, layer or ..., lowest severity)
    ("vanishing_sigmoid_mlp.py:build", {}, "vanishing-gradients", "0", Severity.ERROR),
    ("exploding_deep_relu.py:build", {}, "exploding-gradients", "0", Severity.WARNING),
    ("nan_loss.py:Net", {}, "non-finite", ..., Severity.ERROR),
    ("nan_backward_sqrt.py:Net", {}, "non-finite", "encoder", Severity.ERROR),
    ("saturated_tanh.py:build", {}, "saturated-activations", ..., Severity.WARNING),
    ("dead_relu.py:build", {}, "dead-relus", "5", Severity.ERROR),     # every unit dead: no learning signal
    ("relu_after_output.py:build", {}, "dead-relus", "2", Severity.ERROR),
    ("softmax_single_output.py:build", {"batch": str(EXAMPLES / "softmax_single_output.py:batch")},
     "vanishing-gradients", "softmax", Severity.ERROR),
    ("unused_parameters.py:Net", {}, "unused-parameters", "aux_head", Severity.WARNING),
    ("rnn_vanishing.py:Net", {"input_shape": (8, 100, 16)}, "vanishing-gradients", "rnn", Severity.WARNING),
    ("rnn_exploding.py:Net", {"input_shape": (8, 100, 16)}, "exploding-gradients", "rnn", Severity.WARNING),
]


@pytest.mark.parametrize("spec, extra, rule, layer, severity", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_example_fires_its_rule(spec, extra, rule, layer, severity):
    report = check(str(EXAMPLES / spec), **extra)
    hits = [f for f in report.findings if f.rule == rule and f.severity.rank >= severity.rank]
    assert hits, [(f.rule, f.severity.value, f.layer) for f in report.findings]
    if layer is not ...:
        assert layer in {f.layer for f in hits}, [(f.rule, f.layer) for f in hits]
    assert report.exit_code == 1
    for f in report.findings:
        assert f.fixes and f.evidence and f.message


def test_vanishing_example_ratio_is_tiny():
    (f,) = [f for f in check(str(EXAMPLES / "vanishing_sigmoid_mlp.py:build")).findings
            if f.rule == "vanishing-gradients"]
    assert f.evidence["early_late_ratio"] < 1e-6
    assert "Sigmoid" in f.fixes[0]


def test_rnn_vanishing_is_through_time():
    (f,) = [f for f in check(str(EXAMPLES / "rnn_vanishing.py:Net"), input_shape=(8, 100, 16)).findings
            if f.rule == "vanishing-gradients"]
    assert f.evidence["time_steps"] == 100 and f.evidence["cell"] == "RNN"
    assert f.evidence["time_grad_ratio"] < 1e-3


def test_rnn_exploding_through_time_evidence():
    hits = [f for f in check(str(EXAMPLES / "rnn_exploding.py:Net"), input_shape=(8, 100, 16)).findings
            if f.rule == "exploding-gradients" and "time_grad_ratio" in f.evidence]
    assert hits and hits[0].evidence["time_grad_ratio"] > 1e3
    assert hits[0].evidence["weight_hh_sigma_max"] == pytest.approx(1.15, rel=1e-3)


def test_nan_loss_points_at_the_log_line():
    (f,) = [f for f in check(str(EXAMPLES / "nan_loss.py:Net")).findings if f.rule == "non-finite"]
    assert f.evidence["op"] == "log"
    src = (EXAMPLES / "nan_loss.py").read_text().splitlines()
    assert "torch.log" in src[f.evidence["line"] - 1]


def test_nan_backward_sqrt_points_at_the_sqrt_line():
    (f,) = [f for f in check(str(EXAMPLES / "nan_backward_sqrt.py:Net")).findings if f.rule == "non-finite"]
    assert f.evidence["op"] == "sqrt"
    src = (EXAMPLES / "nan_backward_sqrt.py").read_text().splitlines()
    assert "torch.sqrt" in src[f.evidence["line"] - 1]
    assert all(v == v and abs(v) != float("inf") for v in f.evidence["losses"]), "the loss itself is finite"


HEALTHY = ["healthy_mlp.py:build", "healthy_resnet.py:build", "healthy_transformer.py:build",
           "healthy_lstm.py:build", "healthy_lstm.py:build_bidirectional", "multi_output.py:Net", "rezero.py:build",
           "relu_after_output.py:build_fixed", "relu_collapse.py:build"]


@pytest.mark.parametrize("spec", HEALTHY)
def test_healthy_example_has_no_warning_or_error(spec):
    report = check(str(EXAMPLES / spec))
    assert failing(report) == [], [(f.rule, f.severity.value, f.layer, f.message) for f in report.findings]
    assert report.exit_code == 0
    assert report.layers and all(f.severity is Severity.INFO for f in report.findings)


# --------------------------------------------------------------------------------------------------------
# Hugging Face transformers (optional)
# --------------------------------------------------------------------------------------------------------

TINY_HF = """
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel
import torch


def gpt2():
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=64, vocab_size=128,
                                      bos_token_id=0, eos_token_id=0))


def bert():
    return BertForSequenceClassification(BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=2,
                                                    intermediate_size=128, vocab_size=128,
                                                    max_position_embeddings=64, num_labels=3))


def gpt2_batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128, (4, 16), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
"""


@pytest.fixture
def tiny_hf(write_file):
    pytest.importorskip("transformers")
    return write_file("tiny_hf.py", TINY_HF)


@pytest.mark.transformers
@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_tiny_hf_model_is_healthy(tiny_hf, name):
    report = check(f"{tiny_hf}:{name}")
    assert failing(report) == [], [(f.rule, f.severity.value, f.layer, f.message) for f in report.findings]
    assert report.settings["batch"].startswith("synthetic token ids"), "an embedding-first model gets token ids"
    assert len(report.layers) > 10


@pytest.mark.transformers
def test_tiny_hf_dict_batch_uses_the_models_own_loss(tiny_hf):
    report = check(f"{tiny_hf}:gpt2", batch=f"{tiny_hf}:gpt2_batch")
    assert "own .loss" in report.settings["loss"]
    assert failing(report) == []


@pytest.mark.transformers
@pytest.mark.parametrize("spec", ["hf_gpt2.py:build", "hf_bert.py:build"])
def test_bundled_hf_examples_are_healthy(spec):
    pytest.importorskip("transformers")
    report = check(str(EXAMPLES / spec))
    assert failing(report) == [], [(f.rule, f.severity.value, f.layer, f.message) for f in report.findings]
