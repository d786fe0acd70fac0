"""The loop's optimizer step: loss scaling, per-optimizer clipping, and the checkpoint RNG."""

import random

import pytest
import torch
from torch import nn

from diffq_cli import DiffQuantizer
from diffq_cli.run.steps import optimize as _optimize
from diffq_cli.run.steps import rng_state as _rng_state
from diffq_cli.run.steps import set_rng_state as _set_rng_state

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    quantizer = DiffQuantizer(net, group_size=8, min_size=0)
    bits_opt = torch.optim.Adam([{"params": []}], lr=1e-2)
    quantizer.setup_optimizer(bits_opt, lr=1e-2)
    return net, quantizer, opt, bits_opt


def _step(scaler, grad_clip, mu=50.0):
    net, quantizer, opt, bits_opt = _setup()
    before = [p.detach().clone() for p in net.parameters()]
    torch.manual_seed(1)
    x, y = torch.randn(16, 64), torch.randint(0, 4, (16,))
    net.train()
    loss = nn.functional.cross_entropy(net(x), y) + mu * quantizer.model_size()
    _optimize(loss, [opt, bits_opt], scaler, grad_clip)
    return [p.detach() - b for p, b in zip(net.parameters(), before, strict=True)]


@pytest.mark.parametrize("grad_clip", [None, 1.0])
def test_loss_scaling_changes_no_update(grad_clip):
    """An enabled scaler (on CPU) gives the same update as none: every optimizer's gradients
    are unscaled before clipping and stepping."""
    plain = _step(torch.amp.GradScaler("cpu", enabled=False), grad_clip)
    scaled = _step(torch.amp.GradScaler("cpu", init_scale=2.0**12), grad_clip)
    for a, b in zip(plain, scaled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_weights_and_bit_logits_are_clipped_separately():
    """The bit logits' large gradients must not shrink the weights' update: with a clip above
    the weights' own gradient norm, their update is the unclipped one."""
    # A huge size term: the logits' gradient norm is far above the weights' one.
    no_scaler = torch.amp.GradScaler("cpu", enabled=False)
    unclipped = _step(no_scaler, None, mu=1e6)
    weights = [d for d in unclipped if d.dim() == 2 or d.numel() in (64, 4)]
    weight_norm = torch.linalg.vector_norm(torch.cat([d.flatten() for d in weights])) / 0.1
    clipped = _step(no_scaler, float(weight_norm) * 1.01, mu=1e6)
    for a, b in zip(unclipped, clipped, strict=True):
        torch.testing.assert_close(a, b)


def test_rng_state_round_trip():
    state = _rng_state()
    first = (torch.rand(3), random.random())
    _set_rng_state(state)
    assert torch.equal(torch.rand(3), first[0]) and random.random() == first[1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rng_state_holds_cuda_generators():
    torch.rand(1, device="cuda")  # initialise CUDA
    state = _rng_state()
    assert "cuda" in state
    first = torch.rand(4, device="cuda")
    _set_rng_state(state)
    assert torch.equal(torch.rand(4, device="cuda"), first)
