"""The models of the whole-process benchmark, and the plain script it is compared with.

As a model file for gradcheck:   gradcheck check benchmarks/process_models.py:mlp100 --steps 20
As the plain script:             python benchmarks/process_models.py mlp100 --steps 20
The plain script does what a user's script would to run the same passes: import torch, build the
model, and per step draw a batch, run forward, a cross-entropy loss, torch.autograd.grad over the
trainable parameters. It never imports gradcheck.
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = {"resnet": (32, 3, 32, 32), "mlp100": (64, 256), "lstm2": (32, 64)}
CLASSES = 10


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.short(x))


class SmallResNet(nn.Module):
    """ResNet-8 style: a stem and three stages of one residual block (16, 32, 64 channels), BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.stages = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2))
        self.head = nn.Linear(64, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


class LSTM2(nn.Module):
    def __init__(self, vocab: int = 5000, emb: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.emb(ids))[0][:, -1])


def resnet() -> nn.Module:
    return SmallResNet()


def mlp100() -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(100):
        lin = nn.Linear(256, 256)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        layers += [lin, nn.ReLU()]
    layers.append(nn.Linear(256, CLASSES))
    return nn.Sequential(*layers)


def lstm2() -> nn.Module:
    return LSTM2()


def plain(name: str, steps: int) -> None:
    torch.manual_seed(0)
    model = globals()[name]()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    shape = SHAPES[name]
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        x = (torch.randint(0, 5000, shape, generator=g) if name == "lstm2"
             else torch.randn(shape, generator=g))
        y = torch.randint(0, CLASSES, (shape[0],), generator=g)
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params)
        del grads, loss
    print(f"{name}: {steps} steps")


if __name__ == "__main__":
    steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 20
    plain(sys.argv[1], steps)
