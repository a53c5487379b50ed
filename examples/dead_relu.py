"""Broken: hidden biases at -3 (as after a too-large learning-rate step): every ReLU unit is dead.

    gradcheck check examples/dead_relu.py:build
"""
import torch.nn as nn


def build() -> nn.Module:
    layers = []
    dims = [64, 128, 128, 128]
    for a, b in zip(dims, dims[1:]):
        lin = nn.Linear(a, b)
        nn.init.constant_(lin.bias, -3.0)
        layers += [lin, nn.ReLU()]
    layers.append(nn.Linear(128, 10))
    return nn.Sequential(*layers)
