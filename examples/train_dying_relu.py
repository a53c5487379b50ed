"""Broken (training rehearsal, dead-relus): the He-initialised ReLU MLP of train_healthy_mlp.py, healthy
at step 0, trained with Adam at lr 0.05: the first large steps push half of the last hidden layer's
units negative for every input, and they never fire again.

    gradcheck check examples/train_dying_relu.py:build --train-steps 30 --optimizer adam --lr 0.05
"""
from train_models import mlp


def build():
    return mlp()
