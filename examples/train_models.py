"""Small models for the training-rehearsal examples (--train-steps); each example file picks one and an
optimizer. Kept apart so that broken examples and their healthy twins share the architecture."""
import torch
import torch.nn as nn


def mlp(dims=(32, 128, 128, 10), he: bool = True) -> nn.Sequential:
    layers = []
    for a, b in zip(dims, dims[1:]):
        lin = nn.Linear(a, b)
        if he:
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class BNCNN(nn.Module):
    """Conv-BN-ReLU x3 with pooling, then a linear classifier: 3x32x32 -> 10."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        c = width
        self.features = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 4 * c, 3, padding=1, bias=False), nn.BatchNorm2d(4 * c), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(4 * c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))
