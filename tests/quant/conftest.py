"""Shared models and helpers of the quantizer tests (tiny, CPU, seeded)."""

import io

import pytest
import torch
from torch import nn

from diffq_cli import LSQ, DiffQuantizer, UniformQuantizer


@pytest.fixture(autouse=True)
def _threads(one_thread):
    """Every quantizer test runs on the thread count of the ``one_thread`` fixture."""


class SmallNet(nn.Module):
    """~14k parameters: two quantized tensors at the default min_size, the rest kept float."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(128, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def make_net(seed: int = 0) -> SmallNet:
    """A SmallNet with seeded weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    net = SmallNet()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn1.running_var.uniform_(0.5, 1.5)
    return net


def zeroed(net: nn.Module) -> nn.Module:
    """Zeroes every parameter and buffer, so a restore must write all of them."""
    with torch.no_grad():
        for t in [*net.parameters(), *net.buffers()]:
            t.zero_()
    return net


def save_load(state: dict) -> dict:
    """torch.save then torch.load with the default (weights_only=True) settings."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf)


# name -> (quantizer class, constructor kwargs); the shared contract runs on each.
CONFIGS = {
    "diffq-g8": (DiffQuantizer, {"group_size": 8}),
    "diffq-g0": (DiffQuantizer, {"group_size": 0}),
    "diffq-g1-uniform-noise": (DiffQuantizer, {"group_size": 1, "noise": "uniform"}),
    "diffq-g8-param-noise": (DiffQuantizer, {"group_size": 8, "param": "noise"}),
    "uniform-4": (UniformQuantizer, {"bits": 4}),
    "uniform-4-qat": (UniformQuantizer, {"bits": 4, "qat": True}),
    "lsq-4": (LSQ, {"bits": 4}),
    # the learned grid (a scale per output row); groups of 10 straddle the rows of conv2 (144)
    # and fc1 (128)
    "diffq-g10-learned": (DiffQuantizer, {"group_size": 10, "grid": "learned"}),
    "diffq-g8-learned": (DiffQuantizer, {"group_size": 8, "grid": "learned"}),
    "uniform-4-qat-learned": (UniformQuantizer, {"bits": 4, "qat": True, "grid": "learned"}),
    "lsq-4-learned": (LSQ, {"bits": 4, "grid": "learned"}),
}


def attach(cls, net, lr=0.05, **kwargs):
    """Main optimizer first, then the quantizer, then its parameters into the optimizer."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    quantizer = cls(net, **kwargs)
    quantizer.setup_optimizer(opt, lr=lr)
    return quantizer, opt


def train_steps(net, quantizer, opt, x, steps=2, mu=1e-2):
    """A few optimizer steps on a made-up classification task; returns the losses."""
    net.train()
    target = torch.arange(x.shape[0]) % 10
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), target) + mu * quantizer.model_size()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


class Helpers:
    """The helpers above, handed to tests by the ``h`` fixture."""

    make_net = staticmethod(make_net)
    zeroed = staticmethod(zeroed)
    save_load = staticmethod(save_load)
    attach = staticmethod(attach)
    train_steps = staticmethod(train_steps)


@pytest.fixture
def h():
    return Helpers


@pytest.fixture(params=list(CONFIGS))
def qconfig(request):
    """(name, quantizer class, kwargs) of each contract configuration."""
    cls, kwargs = CONFIGS[request.param]
    return request.param, cls, kwargs


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 8, 8, generator=generator)
