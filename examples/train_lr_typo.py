"""Broken (training rehearsal, update-ratio): a learning-rate typo (1e-9 instead of 1e-3): every update
is ~1e-9 of the weights and the loss never moves.

    gradcheck check examples/train_lr_typo.py:build --train-steps 20 --optimizer adam --lr 1e-9
"""
from train_models import mlp


def build():
    return mlp()
