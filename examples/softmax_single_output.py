"""Broken: a binary classifier with one output unit followed by softmax over that size-1 dimension
(StackOverflow 31880720; the motivating example of AUTOTRAINER and DeepDiagnosis). softmax of one value is
always 1, so its gradient is always 0 and nothing learns.

    gradcheck check examples/softmax_single_output.py:build --loss mse   # error: no learning signal
    gradcheck check examples/softmax_single_output.py:build_fixed        # healthy twin: a raw logit (BCE)
"""
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, fixed: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.out = nn.Linear(32, 1)
        self.softmax = nn.Identity() if fixed else nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.softmax(self.out(self.body(x)))


def build() -> nn.Module:
    return Net()


def build_fixed() -> nn.Module:
    return Net(fixed=True)


def batch():
    """16 examples with binary labels."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 16, generator=g), torch.randint(0, 2, (16,), generator=g)
