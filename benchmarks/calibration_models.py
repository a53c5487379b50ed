"""More models for threshold calibration (benchmarks/calibrate.py): clearly broken variants of each
kind beyond the bundled examples. Each factory takes no arguments."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _mlp(dims, act, std=None, bias=None):
    layers = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        lin = nn.Linear(a, b)
        if std is not None:
            nn.init.normal_(lin.weight, std=std)
        if bias is not None:
            nn.init.constant_(lin.bias, bias)
        layers.append(lin)
        if i < len(dims) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


# --- vanishing -------------------------------------------------------------------------------------------
def nielsen_sigmoid_4hidden():
    """Nielsen ch. 5: [784, 30, 30, 30, 30, 10] sigmoid net, default init."""
    return _mlp([784, 30, 30, 30, 30, 10], nn.Sigmoid)


def nielsen_sigmoid_4hidden_gaussian():
    """Nielsen's own init: N(0, 1) weights and biases, as in the book's measurement."""
    m = _mlp([784, 30, 30, 30, 30, 10], nn.Sigmoid)
    for p in m.parameters():
        nn.init.normal_(p, std=1.0)
    return m


def deep_tanh_small_init():
    """8 tanh layers, weights N(0, 0.01): each layer multiplies the signal by ~0.16."""
    return _mlp([128] + [256] * 8 + [10], nn.Tanh, std=0.01)


def deep_relu_default_init_20():
    """20-layer plain ReLU MLP with PyTorch's default init (no normalisation, no skips)."""
    return _mlp([128] + [256] * 20 + [10], nn.ReLU)


class SigmoidCNN(nn.Module):
    def __init__(self):
        super().__init__()
        chans = [3, 32, 32, 32, 32, 32, 32, 32, 32]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:]))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        for c in self.convs:
            x = torch.sigmoid(c(x))
        return self.fc(x.mean((2, 3)))


def sigmoid_cnn():
    return SigmoidCNN()


# --- exploding -------------------------------------------------------------------------------------------
class PlainCNN(nn.Module):
    def __init__(self, gain=2.0, depth=10):
        super().__init__()
        chans = [3] + [32] * depth
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:]))
        for c in self.convs:
            nn.init.kaiming_normal_(c.weight, nonlinearity="relu")
            c.weight.data *= gain
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        for c in self.convs:
            x = F.relu(c(x))
        return self.fc(x.mean((2, 3)))


def plain_cnn_init_x2():
    """10 conv layers, ReLU, no BatchNorm, He init times 2."""
    return PlainCNN(gain=2.0)


def mlp_orthogonal_gain3():
    m = _mlp([64] + [128] * 10 + [10], nn.ReLU)
    for mod in m:
        if isinstance(mod, nn.Linear):
            nn.init.orthogonal_(mod.weight, gain=3.0)
    return m


class ReluRNNOrthogonal(nn.Module):
    """A ReLU nn.RNN whose weight_hh is orthogonal times `gain` (ReLU halves the active units, so gain 1.2
    still vanishes through time; gain 2.0 explodes)."""

    def __init__(self, gain):
        super().__init__()
        self.rnn = nn.RNN(8, 64, nonlinearity="relu", batch_first=True)
        nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def relu_rnn_orthogonal_1_2():
    return ReluRNNOrthogonal(1.2)


def relu_rnn_orthogonal_2():
    return ReluRNNOrthogonal(2.0)


# --- non-finite ------------------------------------------------------------------------------------------
class ZeroStd(nn.Module):
    """Standardises features with x.std() but no epsilon; one feature is constant -> 0/0."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = x.clone()
        x[:, 0] = 1.0
        x = (x - x.mean(0)) / x.std(0)
        return self.head(F.relu(self.fc(x)))


def zero_std_division():
    return ZeroStd()


class ExpOverflow(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        return torch.exp(self.fc(x) * 200.0)


def exp_overflow():
    return ExpOverflow()


# --- saturation ------------------------------------------------------------------------------------------
class RawPixels(nn.Module):
    """Unnormalised 0-255 pixels into a sigmoid layer (functional torch.sigmoid)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = (x.abs() * 100.0).clamp(0, 255)
        return self.fc2(torch.sigmoid(self.fc1(x)))


def raw_pixels_sigmoid():
    return RawPixels()


def tanh_big_init_conv():
    layers, chans = [], [3, 32, 32, 32]
    for a, b in zip(chans, chans[1:]):
        c = nn.Conv2d(a, b, 3, padding=1)
        nn.init.normal_(c.weight, std=1.0)
        layers += [c, nn.Tanh()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


# --- dead ReLUs ------------------------------------------------------------------------------------------
class DeadConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 32, 3, padding=1)
        nn.init.constant_(self.c2.bias, -5.0)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x))
        return self.fc(x.mean((2, 3)))


def dead_conv_functional():
    return DeadConv()


def dead_relu_large_lr_step():
    """A healthy He-init MLP after one SGD step with lr=50 on a big gradient (biases pushed negative)."""
    torch.manual_seed(0)
    m = _mlp([64, 128, 128, 10], nn.ReLU)
    for mod in m:
        if isinstance(mod, nn.Linear):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    x = torch.randn(256, 64)
    loss = m(x).pow(2).mean() * 100   # pushes activations down
    loss.backward()
    with torch.no_grad():
        for p in m.parameters():
            p -= 50.0 * p.grad
            p.grad = None
    return m


# --- unused ----------------------------------------------------------------------------------------------
class DetachedBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x).detach()], dim=-1))


def detached_branch():
    return DetachedBranch()


# --- no learning signal (issue 9, class 1) ---------------------------------------------------------------
class RoundInForward(nn.Module):
    """Rounds its hidden features (quantisation by hand): round() has a zero derivative everywhere."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        h = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        return self.head(torch.round(h * 4) / 4)


def round_in_forward():
    return RoundInForward()


class ZeroMask(nn.Module):
    """Multiplies the features by a mask buffer that was meant to be ones but is all zeros."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.register_buffer("mask", torch.zeros(64))
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.body(x) * self.mask)


def zero_mask_multiply():
    return ZeroMask()


# --- zero gradients that are not defects (class 2) ---------------------------------------------------------
def zero_init_head():
    """A He-init MLP whose output layer is zero-initialised (common for heads): zero gradients before it at
    step 0 only."""
    m = _mlp([32, 64, 64, 10], nn.ReLU)
    for mod in m:
        if isinstance(mod, nn.Linear):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    nn.init.zeros_(m[-1].weight)
    nn.init.zeros_(m[-1].bias)
    return m


class BasicBlock(nn.Module):
    def __init__(self, c, zero_init_residual=True):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        if zero_init_residual:   # torchvision's resnet(zero_init_residual=True)
            nn.init.zeros_(self.bn2.weight)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ZeroInitResNet(nn.Module):
    def __init__(self, blocks=4, c=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(*[BasicBlock(c) for _ in range(blocks)])
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def zero_init_residual_resnet():
    return ZeroInitResNet()


class ReZeroBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.alpha = nn.Parameter(torch.zeros(1))   # ReZero (Bachlechner et al. 2020)

    def forward(self, x):
        return x + self.alpha * self.ff(x)


def rezero_mlp():
    d = 64
    return nn.Sequential(nn.Linear(32, d), *[ReZeroBlock(d) for _ in range(6)], nn.Linear(d, 10))


# --- moderate but steady decay (class 5) ---------------------------------------------------------------------
def nielsen_batch():
    """MNIST-like inputs for Nielsen's net: 784 pixels in [0, 1], about 80% of them 0, and class labels."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 784, generator=g)
    x = x * (torch.rand(16, 784, generator=g) < 0.2)
    return x, torch.randint(0, 10, (16,), generator=g)


def nielsen_sigmoid_4hidden_mnist_like():
    """Nielsen's [784, 30, 30, 30, 30, 10] sigmoid net with his N(0, 1) weights and biases (run with
    --batch nielsen_batch: MNIST-like inputs), where he measured the first hidden layer learning ~100x
    slower than the fourth."""
    return nielsen_sigmoid_4hidden_gaussian()


# --- dead units vs correlation collapse (class 4) -----------------------------------------------------------
class PlainReluCNN(nn.Module):
    """A healthy 30-layer plain ReLU CNN with He init (He et al. 2015 trained such nets): deep
    representations of different examples become nearly parallel, so on a small batch about half the late
    units are off for every example without being dead."""

    def __init__(self, depth=30, c=16):
        super().__init__()
        chans = [3] + [c] * depth
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:]))
        self.acts = nn.ModuleList(nn.ReLU() for _ in range(depth))
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        for conv, act in zip(self.convs, self.acts):
            x = act(conv(x))
        return self.fc(x.mean((2, 3)))


def plain_relu_cnn_he_30():
    return PlainReluCNN()


class SEBlock(nn.Module):
    """Squeeze-excite (Hu et al. 2018, as in RegNet/EfficientNet): global pool, a ReLU bottleneck of
    `mid` units, a sigmoid gate per channel."""

    def __init__(self, c, mid):
        super().__init__()
        self.fc1 = nn.Conv2d(c, mid, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(mid, c, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class SENet(nn.Module):
    """Healthy: a small residual CNN with BatchNorm and squeeze-excite bottlenecks of 4 units (channels / 8).
    `dead_se=True` is its broken twin: the bottlenecks' biases at -20, so every SE unit is dead (the gates
    stay at 0.5 and the SE weights never learn)."""

    def __init__(self, c=32, blocks=4, dead_se=False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.ModuleList()
        for _ in range(blocks):
            se = SEBlock(c, c // 8)
            if dead_se:
                nn.init.constant_(se.fc1.bias, -20.0)
            self.blocks.append(nn.ModuleDict({
                "conv": nn.Conv2d(c, c, 3, padding=1, bias=False), "bn": nn.BatchNorm2d(c), "relu": nn.ReLU(),
                "se": se}))
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = x + b["se"](b["relu"](b["bn"](b["conv"](x))))
        return self.fc(x.mean((2, 3)))


def se_resnet():
    return SENet()


def se_resnet_dead_se():
    return SENet(dead_se=True)


def plain_relu_mlp_he_30_bias_minus_2():
    """Broken twin of examples/relu_collapse.py: the same 30-layer He-init MLP with every bias at -2."""
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location(
        "relu_collapse", pathlib.Path(__file__).resolve().parent.parent / "examples" / "relu_collapse.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = mod.build()
    for layer in m:
        if isinstance(layer, nn.Linear) and layer.out_features != 10:
            nn.init.constant_(layer.bias, -2.0)
    return m


def nielsen_tanh_xavier_mnist_like():
    """The healthy twin of Nielsen's net: the same [784, 30, 30, 30, 30, 10] shape with tanh and Glorot/Xavier
    init (run with --batch nielsen_batch)."""
    m = _mlp([784, 30, 30, 30, 30, 10], nn.Tanh)
    for mod in m:
        if isinstance(mod, nn.Linear):
            nn.init.xavier_normal_(mod.weight, gain=nn.init.calculate_gain("tanh"))
            nn.init.zeros_(mod.bias)
    return m


def tanh_mlp_xavier_8():
    """Healthy: 8 tanh layers of 128 with Glorot/Xavier init."""
    m = _mlp([64] + [128] * 8 + [10], nn.Tanh)
    for mod in m:
        if isinstance(mod, nn.Linear):
            nn.init.xavier_normal_(mod.weight, gain=nn.init.calculate_gain("tanh"))
            nn.init.zeros_(mod.bias)
    return m


def plain_relu_cnn_xavier_30():
    """Broken twin of plain_relu_cnn_he_30: the same 30-layer plain ReLU CNN initialised with Glorot/Xavier
    (gain 1), which halves the signal's variance at every ReLU layer: 2^-15 over the depth (He et al. 2015,
    fig. 3: such a 30-layer net does not train)."""
    m = PlainReluCNN()
    for conv in m.convs:
        nn.init.xavier_normal_(conv.weight)
        nn.init.zeros_(conv.bias)
    return m
