"""Broken (training rehearsal, exploding-gradients): a deep plain tanh MLP (no normalisation) trained with
SGD at lr 0.5 and momentum 0.9: after a few quiet steps the gradient norm jumps by orders of magnitude.

    gradcheck check examples/train_grad_spikes.py:build --train-steps 30 \\
        --optimizer examples/train_grad_spikes.py:optimizer
"""
import torch
import torch.nn as nn


def build():
    layers = []
    dims = [32] + [128] * 6
    for a, b in zip(dims, dims[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    layers.append(nn.Linear(128, 10))
    return nn.Sequential(*layers)


def optimizer(params):
    return torch.optim.SGD(params, lr=0.5, momentum=0.9)
