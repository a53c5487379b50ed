"""Healthy twin (training rehearsal): a ReLU MLP (He init) trained with SGD + momentum 0.9 at lr 0.05
learns its synthetic batches to ~0 loss; the gradients shrink with the loss, which is success.

    gradcheck check examples/train_healthy_mlp.py:build --train-steps 60 \\
        --optimizer examples/train_healthy_mlp.py:optimizer
"""
import torch
from train_models import mlp


def build():
    return mlp()


def optimizer(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)
