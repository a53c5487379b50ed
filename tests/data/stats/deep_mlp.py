"""A 100-layer MLP (50 x Linear + Tanh, PyTorch's default init): the gradient shrinks with depth."""
import torch.nn as nn


def build() -> nn.Module:
    layers = []
    for _ in range(50):
        layers += [nn.Linear(32, 32), nn.Tanh()]
    return nn.Sequential(*layers)
