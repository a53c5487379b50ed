"""Broken (training rehearsal, update-ratio): the optimizer is built over the encoder only, so the head
gets gradients but never changes.

    gradcheck check examples/train_missing_params.py:build --train-steps 10 \\
        --optimizer examples/train_missing_params.py:optimizer
"""
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def build():
    return Net()


def optimizer(model):
    return torch.optim.Adam(model.encoder.parameters(), lr=1e-3)
