"""Healthy: an LSTM text classifier (embedding -> 2-layer LSTM -> last hidden state -> linear).

    gradcheck check examples/healthy_lstm.py:build
"""
import torch
import torch.nn as nn


class LSTMClassifier(nn.Module):
    def __init__(self, vocab: int = 5000, emb: int = 128, hidden: int = 128, classes: int = 4,
                 bidirectional: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, emb, padding_idx=0)
        self.lstm = nn.LSTM(emb, hidden, num_layers=2, batch_first=True, dropout=0.1,
                            bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, (h, _) = self.lstm(self.embed(ids))
        if self.lstm.bidirectional:
            return self.head(torch.cat([h[-2], h[-1]], dim=-1))
        return self.head(h[-1])


def build() -> nn.Module:
    return LSTMClassifier()


def build_bidirectional() -> nn.Module:
    return LSTMClassifier(bidirectional=True)
