"""Broken: a ReLU after the last Linear. The 3 logits can never go negative, and here every one of them is
below 0 for every input, so no gradient reaches any weight: the network cannot learn at all.

    gradcheck check examples/relu_after_output.py:build          # error: no learning signal (dead-relus)
    gradcheck check examples/relu_after_output.py:build_fixed    # the healthy twin: the ReLU removed
"""
import torch.nn as nn


def _body() -> nn.Sequential:
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())


def build() -> nn.Module:
    head = nn.Linear(64, 3)
    nn.init.constant_(head.bias, -4.0)   # as after a few large steps that pushed every logit below 0
    return nn.Sequential(_body(), head, nn.ReLU())


def build_fixed() -> nn.Module:
    head = nn.Linear(64, 3)
    nn.init.constant_(head.bias, -4.0)
    return nn.Sequential(_body(), head)
