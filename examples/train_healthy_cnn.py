"""Healthy twin (training rehearsal): a BatchNorm CNN trained with Adam at lr 1e-3.

    gradcheck check examples/train_healthy_cnn.py:build --train-steps 30 --optimizer adam --lr 1e-3
"""
from train_models import BNCNN


def build():
    return BNCNN()
