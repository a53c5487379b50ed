"""The Python API (`from gradcheck_cli import check`) and the pytest helper."""
from __future__ import annotations

import doctest
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import gradcheck_cli  # noqa: E402
from gradcheck_cli import assert_healthy_gradients, check  # noqa: E402
from gradcheck_cli.errors import InputError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def sigmoid_stack(depth: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(32, 32), nn.Sigmoid())], nn.Linear(32, 3))


def healthy() -> nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(3):
        lin = nn.Linear(32, 32)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(32, 3))


def test_module_docstring_example_runs():
    import gradcheck_cli.api as api

    result = doctest.testmod(api, verbose=False)
    assert result.attempted >= 3 and result.failed == 0


def test_check_returns_the_report_the_cli_renders():
    report = check(sigmoid_stack(), (torch.randn(8, 32), torch.randint(0, 3, (8,))))
    assert report.verdict == "fail" and report.exit_code == 1
    (f,) = [f for f in report.findings if f.rule == "vanishing-gradients"]
    assert f.layer == "0" and f.evidence["early_late_ratio"] < 1e-3 and f.fixes
    doc = report.to_dict()
    assert doc["schema_version"] == 1 and doc["summary"]["exit_code"] == 1
    assert [l["name"] for l in doc["layers"]][:2] == ["0", "1"]
    json.dumps(doc, allow_nan=False)   # plain JSON-safe data


def test_check_leaves_the_model_untouched():
    model = healthy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    check(model, torch.randn(4, 32))
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("batch", [
    None,
    torch.randn(8, 32),
    (torch.randn(8, 32), torch.randint(0, 3, (8,))),
    lambda: torch.randn(8, 32),
    iter([torch.randn(8, 32) for _ in range(3)]),
], ids=["synthetic", "tensor", "pair", "callable", "iterator"])
def test_batch_kinds(batch):
    report = check(healthy(), batch)
    assert report.exit_code == 0, [f.message for f in report.findings]
    assert report.settings["steps"] == 3


def test_dict_batch_and_callable_loss():
    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 2)

        def forward(self, x, scale):
            return self.fc(x) * scale

    def my_loss(output, target):
        return output.pow(2).mean()

    report = check(KW(), {"x": torch.randn(4, 6), "scale": torch.tensor(2.0)}, loss=my_loss)
    assert report.settings["loss"].startswith("my_loss")


def test_spec_strings_work_like_the_cli():
    report = check(str(ROOT / "examples" / "dead_relu.py") + ":build")
    assert {f.rule for f in report.findings} >= {"dead-relus"}


def test_rules_settings_are_validated_and_applied():
    batch = (torch.randn(8, 32), torch.randint(0, 3, (8,)))
    quiet = check(sigmoid_stack(), batch, rules={"vanishing-gradients": {"enabled": False}})
    assert "vanishing-gradients" not in {f.rule for f in quiet.findings}
    with pytest.raises(InputError, match="did you mean 'dead-relus'"):
        check(healthy(), rules={"dead-relu": {"fraction": 0.2}})
    assert check(sigmoid_stack(), batch, fail_on="never").exit_code == 0


def test_bad_arguments_are_input_errors():
    with pytest.raises(InputError, match="nn.Module"):
        check(42)
    with pytest.raises(InputError, match="steps"):
        check(healthy(), steps=0)


def test_assert_healthy_gradients():
    report = assert_healthy_gradients(healthy(), torch.randn(8, 32))
    assert report.exit_code == 0
    with pytest.raises(AssertionError) as exc:
        assert_healthy_gradients(sigmoid_stack(), (torch.randn(8, 32), torch.randint(0, 3, (8,))))
    text = str(exc.value)
    assert "GC101 vanishing-gradients" in text and "fix 1" in text and "\x1b[" not in text


def test_importing_the_package_stays_light():
    code = "import sys, gradcheck_cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr
    assert callable(gradcheck_cli.check)
