"""Healthy: GPT-2 built from a `transformers` config with random weights (no download).

    gradcheck check examples/hf_gpt2.py:build          # 4 layers, 256 wide: seconds
    gradcheck check examples/hf_gpt2.py:build_124m     # the 124M-parameter config (12 layers, 768 wide)

Needs `pip install transformers`.
"""
from transformers import GPT2Config, GPT2LMHeadModel


def build():
    return GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=256, n_head=4, n_positions=128, vocab_size=8000,
                                      bos_token_id=0, eos_token_id=0))


def build_124m():
    return GPT2LMHeadModel(GPT2Config())
