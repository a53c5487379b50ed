"""Broken: a vanilla tanh nn.RNN over 100 steps that classifies from its last hidden state only.

    gradcheck check examples/rnn_vanishing.py:Net --input-shape 8,100,16
"""
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(16, 64, batch_first=True)
        self.head = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])
