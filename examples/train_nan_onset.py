"""Broken (training rehearsal, non-finite): log(softmax(x)) computed in two steps. Finite at step 0; once
SGD at lr 1.0 makes the logits confident, softmax underflows to 0 for a target class and the loss turns
Inf at some step (F.log_softmax would stay finite).

    gradcheck check examples/train_nan_onset.py:Net --train-steps 30 \\
        --optimizer examples/train_nan_onset.py:optimizer --loss examples/train_nan_onset.py:nll
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.softmax(self.body(x), dim=-1))   # unstable: use F.log_softmax


def nll(log_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(log_probs, target)


def optimizer(params):
    return torch.optim.SGD(params, lr=1.0, momentum=0.9)
