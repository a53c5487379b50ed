"""Dead ReLUs vs correlation collapse: how many units of healthy deep plain ReLU nets (He init) are off
for every example at step 0, and what gradcheck makes of it. Prints one markdown row per network.

    python benchmarks/relu_collapse_survey.py          # ~5 minutes on an idle 2-core machine

Networks: 30 Conv3x3+ReLU layers (32x32 inputs, no downsampling or 3 stride-2 layers down to 4x4; inputs
N(0,1) or pixels in [0, 1]) and 30 Linear+ReLU layers (64 inputs, N(0,1)); zero biases or none; the
check's 3 steps at seed 0. Columns: the share of units off (max pre-activation <= 0 on every example)
averaged over the last 10 ReLU layers and in the worst layer; the worst layer's coherence and median
off-unit margin; the worst share of units the dead-relus verdict counts as dead; its findings.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from gradcheck_cli import check  # noqa: E402
from gradcheck_cli.rules.dead_relu import RULE as DEAD, _dead_units  # noqa: E402
from gradcheck_cli.stats import LayerStats, RunStats  # noqa: E402


def cnn(width: int, bias: bool, down: tuple[int, ...], depth: int = 30) -> nn.Module:
    layers: list[nn.Module] = []
    c = 3
    for i in range(depth):
        conv = nn.Conv2d(c, width, 3, stride=2 if i in down else 1, padding=1, bias=bias)
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        if bias:
            nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU()]
        c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def mlp(width: int, bias: bool, depth: int = 30) -> nn.Module:
    layers: list[nn.Module] = []
    d = 64
    for _ in range(depth):
        lin = nn.Linear(d, width, bias=bias)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        if bias:
            nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(width, 10))


def row(label: str, model: nn.Module, batch) -> None:
    rep = check(model, batch, device="cpu")
    stats = RunStats(layers=[LayerStats(**{k: v for k, v in lv.items() if k not in ("dead_fraction", "off_fraction")})
                             for lv in rep.layers], steps=3, losses=[])
    relus = [l for l in stats.layers if l.units]
    late = relus[-10:]
    worst = max(relus, key=lambda l: l.off_fraction)
    opts = {o.name: o.default for o in DEAD.options}
    dead = max(_dead_units(stats, l, opts) / l.units for l in relus)
    found = ", ".join(f"{f.rule} ({f.severity.value})" for f in rep.findings if f.rule == "dead-relus") or "-"
    coh = "-" if worst.coherence is None else f"{worst.coherence:.2f}"
    margin = "-" if worst.off_margin_median is None else f"{worst.off_margin_median:.2f}"
    print(f"| {label} | {sum(l.off_fraction for l in late) / len(late):.2f} | {worst.off_fraction:.2f} | {coh} | "
          f"{margin} | {dead:.2f} | {found} |", flush=True)


def main() -> None:
    print("| network | off, last 10 layers | off, worst layer | coherence (worst) | margin (worst) | dead (verdict) | "
          "dead-relus |")
    print("|---|---|---|---|---|---|---|")
    for down, bias, kind in itertools.product([(), (2, 5, 8)], [False, True], ["N(0,1)", "pixels [0,1]"]):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(8, 3, 32, 32, generator=g) if kind == "N(0,1)" else torch.rand(8, 3, 32, 32, generator=g)
        torch.manual_seed(0)
        row(f"CNN w32 {'3 downsamplings' if down else '32x32'} {'zero bias' if bias else 'no bias'} batch 8 {kind}",
            cnn(32, bias, down), x)
    for width, bias, b in itertools.product([16, 32, 64, 256], [False, True], [4, 8, 32]):
        torch.manual_seed(0)
        row(f"MLP w{width} {'zero bias' if bias else 'no bias'} batch {b}", mlp(width, bias),
            torch.randn(b, 64, generator=torch.Generator().manual_seed(0)))


if __name__ == "__main__":
    main()
