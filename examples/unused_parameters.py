"""Broken: `aux_head` is defined in __init__ and never used in forward.

    gradcheck check examples/unused_parameters.py:Net
"""
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)
        self.aux_head = nn.Linear(64, 5)   # meant for an auxiliary loss that was never wired up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
