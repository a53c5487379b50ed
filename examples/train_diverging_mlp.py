"""Broken (training rehearsal, loss-divergence): the ReLU MLP of train_healthy_mlp.py with SGD at lr 1.0
(momentum 0.9): every step overshoots, and the loss climbs two orders of magnitude within a few steps.

    gradcheck check examples/train_diverging_mlp.py:build --train-steps 30 \\
        --optimizer examples/train_diverging_mlp.py:optimizer
"""
import torch
from train_models import mlp


def build():
    return mlp()


def optimizer(params):
    return torch.optim.SGD(params, lr=1.0, momentum=0.9)
