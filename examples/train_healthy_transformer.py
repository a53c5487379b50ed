"""Healthy twin (training rehearsal): a pre-LN transformer language model (healthy_transformer.py, made
smaller for a quick rehearsal: 2 blocks, d=64, vocabulary 256) trained with AdamW at lr 3e-4.

    gradcheck check examples/train_healthy_transformer.py:build --input-shape 4,32 --train-steps 30 \\
        --optimizer adamw --lr 3e-4
"""
from healthy_transformer import TransformerLM


def build():
    return TransformerLM(vocab=256, d=64, heads=4, layers=2, ctx=32)
