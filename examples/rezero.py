"""Healthy: ReZero residual blocks (Bachlechner et al. 2020), x + alpha * f(x) with alpha initialised to 0.
The weights inside every branch get an exactly-zero gradient at step 0 only: that is reported as info,
never as a warning, and freezing them is never suggested.

    gradcheck check examples/rezero.py:build
"""
import torch
import torch.nn as nn


class ReZeroBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.alpha * self.ff(x)


def build() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), *[ReZeroBlock(64) for _ in range(6)], nn.Linear(64, 10))
