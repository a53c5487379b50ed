"""Broken: a 16-layer ReLU MLP initialised with std 0.2 at width 256 (He init would be 0.088).

    gradcheck check examples/exploding_deep_relu.py:build
"""
import torch.nn as nn


def build() -> nn.Module:
    layers, width = [], 256
    dims = [128] + [width] * 15
    for a, b in zip(dims, dims[1:]):
        lin = nn.Linear(a, b)
        nn.init.normal_(lin.weight, std=0.2)
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)
