"""Broken: the loss is finite but every gradient is NaN: sqrt(sum(x**2)) of an exactly-zero vector.

The model normalises its hidden features by their L2 norm computed as sqrt(sum of squares). The
padding rows of the batch are all zero, so the norm is sqrt(0) = 0, whose derivative is inf; times 0 it
is NaN in the backward pass.

    gradcheck check examples/nan_backward_sqrt.py:Net
"""
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(16, 32, bias=False)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, torch.zeros_like(x[:2])])          # two padding rows, as a collate_fn would add
        h = self.encoder(x)
        norm = torch.sqrt((h * h).sum(-1, keepdim=True))     # sqrt(0) for the padding rows
        h = h / (norm + 1e-6)                                  # the epsilon is in the wrong place
        return self.head(h)[:-2]
