"""Healthy: a 6-layer ReLU MLP with He (Kaiming) initialisation and zero biases.

    gradcheck check examples/healthy_mlp.py:build
"""
import torch.nn as nn


def build() -> nn.Module:
    dims = [784, 256, 256, 256, 256, 256]
    layers = []
    for a, b in zip(dims, dims[1:]):
        lin = nn.Linear(a, b)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
    layers.append(nn.Linear(dims[-1], 10))
    return nn.Sequential(*layers)
