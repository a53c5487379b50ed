"""Broken: a ReLU nn.RNN whose recurrent weight is 1.15 * I: the gradient grows ~1.15x per step back.

    gradcheck check examples/rnn_exploding.py:Net --input-shape 8,100,16
"""
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(16, 64, nonlinearity="relu", batch_first=True)
        with torch.no_grad():
            self.rnn.weight_hh_l0.copy_(1.15 * torch.eye(64))
        self.head = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])
