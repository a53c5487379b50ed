"""Healthy: BERT for sequence classification from a `transformers` config with random weights.

    gradcheck check examples/hf_bert.py:build

Needs `pip install transformers`.
"""
from transformers import BertConfig, BertForSequenceClassification


def build():
    cfg = BertConfig(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024,
                     vocab_size=8000, max_position_embeddings=128, num_labels=3)
    return BertForSequenceClassification(cfg)


def build_base():
    return BertForSequenceClassification(BertConfig(num_labels=3))
