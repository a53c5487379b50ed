"""Broken: a 10-layer MLP with sigmoid after every hidden layer (Nielsen, ch. 5, made deeper).

    gradcheck check examples/vanishing_sigmoid_mlp.py:build
"""
import torch.nn as nn


def build() -> nn.Module:
    layers, width = [], 64
    dims = [784] + [width] * 9
    for a, b in zip(dims, dims[1:]):
        layers += [nn.Linear(a, b), nn.Sigmoid()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)
