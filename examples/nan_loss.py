"""Broken: log(softmax(logits / T)) computed by hand with a sharp temperature T = 0.001.

softmax underflows to exactly 0 for every class but the winner, log(0) = -inf, and the cross-entropy of
any other target class is inf (its gradient NaN). F.log_softmax(logits / T) would be exact.

    gradcheck check examples/nan_loss.py:Net
"""
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, temperature: float = 0.001) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.body(x) / self.temperature, dim=-1)
        return torch.log(probs)          # log(0) = -inf for every class but the winner
