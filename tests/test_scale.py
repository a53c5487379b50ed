"""A 1000-layer model is checked to the end, and the run leaves no hook behind on any of its modules
or parameters."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from gradcheck_cli import batches, losses  # noqa: E402
from gradcheck_cli import measure  # noqa: E402
from gradcheck_cli.pipeline import apply_rules  # noqa: E402


def hook_counts(model: nn.Module) -> tuple:
    mods = list(model.modules())
    return (sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                + len(getattr(m, "_backward_pre_hooks", {})) for m in mods),
            sum(len(p._backward_hooks or {}) for p in model.parameters()))


def test_thousand_layer_model_completes_and_leaves_no_hooks():
    torch.manual_seed(0)
    layers = []
    for _ in range(1000):
        lin = nn.Linear(16, 16)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        layers += [lin, nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(16, 4))
    before = hook_counts(model)
    src = batches.make_batch_source(None, (4, 16), model, seed=0)
    result = measure.run_passes(model, src, losses.resolve(None), steps=2, seed=0, device=torch.device("cpu"))
    stats = result.stats
    assert len(stats.layers) == 2002           # 1001 Linear + 1000 ReLU + the model itself
    assert [l.index for l in stats.layers] == list(range(2002))
    assert all(l.grad_norm is not None for l in stats.layers if l.type == "Linear")
    findings = apply_rules(stats, {})          # the rules run on it too
    assert isinstance(findings, list)
    assert hook_counts(model) == before == (0, 0)
