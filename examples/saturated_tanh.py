"""Broken: a tanh MLP whose Linear layers are initialised with std 1.0 (Xavier would be ~0.06).

    gradcheck check examples/saturated_tanh.py:build
"""
import torch.nn as nn


def build() -> nn.Module:
    layers = []
    dims = [64, 256, 256, 256, 256]
    for a, b in zip(dims, dims[1:]):
        lin = nn.Linear(a, b)
        nn.init.normal_(lin.weight, std=1.0)
        layers += [lin, nn.Tanh()]
    layers.append(nn.Linear(256, 10))
    return nn.Sequential(*layers)
