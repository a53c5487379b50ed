"""Healthy: a 30-layer plain ReLU MLP with He init (no residual connections, no normalisation).

    gradcheck check examples/relu_collapse.py:build

Deep in a plain ReLU stack the representations of different examples become nearly parallel
(correlation collapse): on a small batch about half of the late units are off for every example,
less than a standard deviation below zero. They are not dead (they fire on other inputs and learn),
so gradcheck reports info, not dead ReLUs. Twin: examples/dead_relu.py (biases at -3: really dead).
"""
import torch.nn as nn


def build(depth: int = 30, width: int = 32) -> nn.Module:
    layers: list[nn.Module] = []
    d = 64
    for _ in range(depth):
        lin = nn.Linear(d, width)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")   # He et al. 2015
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
        d = width
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)
