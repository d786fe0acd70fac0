"""Training weights placed per layer for one forward and recomputed in the backward."""

import pytest
import torch
from torch import nn

from diffq_cli import DiffQuantizer
from diffq_cli.quant import install


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 32)
        self.seen = []
        self.watch = {}  # name -> Linear of every block, set once the net is built

    def forward(self, x):
        # which layers hold a placed (noisy) weight while this block runs
        self.seen.append({n: "weight" in m.__dict__ for n, m in self.watch.items()})
        return self.b(torch.relu(self.a(x)))


def _grads(seed, light: bool, monkeypatch):
    if not light:
        monkeypatch.setattr(install.Installer, "_open_light", lambda self: None)
    torch.manual_seed(seed)
    net = nn.Sequential(Block(), Block(), nn.Linear(32, 4))
    layers = {f"{i}.{c}": getattr(net[i], c) for i in (0, 1) for c in "ab"}
    net[0].watch = net[1].watch = layers
    quantizer = DiffQuantizer(net, group_size=4, min_size=0)
    quantizer.no_optimizer()
    net.train()
    torch.manual_seed(seed + 1)
    x = torch.randn(8, 32)
    (net(x) ** 2).sum().backward()
    monkeypatch.undo()
    return net, {n: p.grad.clone() for n, p in net.named_parameters()}


def _two_bit_diffq(net, **kwargs):
    """Coarse widths (2-3 bits): the noise moves the output visibly; biases stay float."""
    quantizer = DiffQuantizer(net, group_size=4, min_size=0, init_bits=2, min_bits=2,
                              max_bits=3, **kwargs)
    quantizer.no_optimizer()
    return quantizer


def test_recomputed_weights_give_the_same_gradients(monkeypatch):
    _, light = _grads(0, True, monkeypatch)
    _, kept = _grads(0, False, monkeypatch)
    assert light.keys() == kept.keys()
    for name in light:
        torch.testing.assert_close(light[name], kept[name], rtol=0, atol=0, msg=name)


def test_each_blocks_weights_exist_only_while_it_runs(monkeypatch):
    net, _ = _grads(0, True, monkeypatch)
    first, second = net[0], net[1]
    # While a block runs its own layers hold their noisy weights and the other block's do not
    # (the second's are not placed yet; the first's are dropped once it returned).
    assert first.seen[0] == {"0.a": True, "0.b": True, "1.a": False, "1.b": False}
    assert second.seen[0] == {"0.a": False, "0.b": False, "1.a": True, "1.b": True}
    for block in (first, second):
        assert all("weight" not in m.__dict__ for m in (block.a, block.b))  # gone afterwards


def test_a_parent_reading_its_childs_weight_sees_the_noisy_one():
    """nn.MultiheadAttention reads out_proj.weight itself, without calling out_proj."""
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(16, 2, batch_first=True)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    model = Wrap()
    # Only out_proj.weight is quantized: any change in the output comes from it.
    quantizer = _two_bit_diffq(model, exclude=["*in_proj*", "*bias"])
    assert [qp.name for qp in quantizer._qparams] == ["attn.out_proj.weight"]
    x = torch.randn(2, 5, 16)
    model.eval()
    with torch.no_grad():
        quantized = model(x)
    model.train()
    with torch.no_grad():
        noisy = model(x)
    quantizer.detach()
    with torch.no_grad():
        plain = model(x)
    assert not torch.allclose(noisy, plain) and not torch.allclose(quantized, plain)


def test_layers_in_a_module_list_train_on_noisy_weights():
    """An nn.ModuleList has no forward: its layers, called by the model in a loop, place their
    own noisy weights (training them on floats would be silently wrong)."""

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(16, 16) for _ in range(3)])

        def forward(self, x):
            for layer in self.layers:
                x = torch.relu(layer(x))
            return x

    torch.manual_seed(0)
    net = Stack()
    x = torch.randn(4, 16)
    with torch.no_grad():
        plain = net(x)
    quantizer = _two_bit_diffq(net, exclude=["*bias"])
    net.train()
    noisy = net(x)
    assert not torch.allclose(noisy, plain)
    noisy.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in quantizer._bit_parameters())  # the noise (and its width) was used
    assert all("weight" not in layer.__dict__ for layer in net.layers)  # removed afterwards


def test_weights_read_directly_by_the_model_get_noise_from_the_next_step():
    """No hook runs for a layer whose weight the model reads itself: after one forward (with a
    warning) it is placed for the whole forward, so training does not stay on floats."""

    class Direct(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Sequential(nn.Linear(16, 16))

        def forward(self, x):
            return torch.nn.functional.linear(x, self.inner[0].weight)

    torch.manual_seed(0)
    net = Direct()
    x = torch.randn(4, 16)
    with torch.no_grad():
        plain = net(x)
    _two_bit_diffq(net, exclude=["*bias"])
    net.train()
    with pytest.warns(UserWarning, match="read directly"):
        first = net(x)
    assert torch.equal(first, plain)  # this forward could not be reached
    assert not torch.allclose(net(x), plain)  # from the next one on, noise
