"""Healthy: a model with an auxiliary head and a detection-style dict of heads. The default loss covers
every output (a synthetic target per output) and says which outputs it used.

    gradcheck check examples/multi_output.py:Net
"""
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)       # the main classifier
        self.aux = nn.Linear(64, 4)         # an auxiliary classifier
        self.box = nn.Linear(64, 4)         # a regression head (box coordinates)

    def forward(self, x: torch.Tensor):
        h = self.backbone(x)
        return self.head(h), {"aux_logits": self.aux(h), "boxes": self.box(h)}
