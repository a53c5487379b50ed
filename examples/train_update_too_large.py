"""Broken (training rehearsal, update-ratio): Adam at lr 0.5, so each step rewrites a large share of the
weights (healthy: ~1e-3 of them).

    gradcheck check examples/train_update_too_large.py:build --train-steps 20 --optimizer adam --lr 0.5
"""
from train_models import mlp


def build():
    return mlp()
