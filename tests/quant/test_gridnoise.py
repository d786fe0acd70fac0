"""The learned and channel grids' noisy weights (quant/gridnoise.py) against the same formulas
in plain autograd: values and the gradients to the weight, alpha, the bits and the unit."""

import pytest
import torch

from diffq_cli.quant.gridnoise import (
    LearnedNoisy,
    channel_noisy_and_again,
    learned_noisy_and_again,
)
from diffq_cli.quant.grids import channel_noisy, per_group, per_row


def _reference(weight, alpha, bits, noise, group_size, mult):
    alpha_e = per_row(alpha, weight.shape)
    step = alpha_e * torch.exp2(1 - per_group(bits, weight.numel(), group_size))
    w = weight.reshape(-1)
    # the mid-rise levels' extremes: +-(alpha - step / 2)
    clamped = torch.maximum(torch.minimum(w, alpha_e - step / 2), step / 2 - alpha_e)
    return (clamped + noise * step * mult).view(weight.shape)


# whole groups per row (the blocked path), groups straddling rows, a short last group
@pytest.mark.parametrize("shape", [(4, 16, 3, 3), (12, 32), (16, 3, 3, 3), (10, 13)])
@pytest.mark.parametrize("chunk", [1 << 16, 100])  # one slice of rows, or several (and a rest)
def test_values_and_gradients_match_plain_autograd(shape, chunk, monkeypatch):
    from diffq_cli.quant import gridnoise

    monkeypatch.setattr(gridnoise, "CHUNK", chunk)
    torch.manual_seed(0)
    weight = torch.randn(shape, requires_grad=True)
    numel, gs = weight.numel(), 8
    # alpha under the largest magnitudes: some weights are clipped at either end
    alpha = (0.6 * weight.detach().abs().reshape(shape[0], -1).amax(1)).requires_grad_()
    bits = (2 + 3 * torch.rand(-(-numel // gs))).requires_grad_()
    noise = torch.randn(numel)
    upstream = torch.randn(shape)
    outs, grads = [], []
    for fn in (_reference, LearnedNoisy.apply):
        out = fn(weight, alpha, bits, noise, gs, 0.5)
        outs.append(out.detach())
        grads.append(torch.autograd.grad(out, (weight, alpha, bits), upstream))
    torch.testing.assert_close(outs[1], outs[0])
    for mine, ref in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
    clipped = (grads[0][0] == 0).sum()
    assert 0 < clipped < numel  # the clamp was exercised, not everything clipped


def test_again_recomputes_the_same_values_without_autograd():
    torch.manual_seed(1)
    weight = torch.randn(8, 24, requires_grad=True)
    alpha = torch.full((8,), 1.5, requires_grad=True)
    bits = torch.full((24,), 3.0, requires_grad=True)
    noise = torch.randn(192)
    out, again = learned_noisy_and_again(weight, alpha, bits, noise, 8, 0.5)
    recomputed = again()
    assert not recomputed.requires_grad
    torch.testing.assert_close(recomputed, out.detach())


# whole groups per row (ChannelNoisy), groups straddling rows and a short last group (the
# plain-autograd fallback), a 1-D weight (one row)
@pytest.mark.parametrize("shape", [(4, 16, 3, 3), (12, 32), (16, 3, 3, 3), (10, 13), (64,)])
def test_channel_values_and_gradients_match_plain_autograd(shape):
    """Including the span's gradient: each row's max and min get d out / d span (+, -)."""
    torch.manual_seed(0)
    weight = torch.randn(shape, requires_grad=True)
    numel, gs = weight.numel(), 8
    unit = (0.1 + torch.rand(-(-numel // gs))).requires_grad_()
    noise = torch.rand(numel) - 0.5
    upstream = torch.randn(shape)
    outs, grads = [], []
    for fn in (lambda: channel_noisy(weight, per_group(unit, numel, gs), noise, 0.5),
               lambda: channel_noisy_and_again(weight, unit, noise, gs, 0.5)[0]):
        out = fn()
        outs.append(out.detach())
        grads.append(torch.autograd.grad(out, (weight, unit), upstream))
    torch.testing.assert_close(outs[1], outs[0])
    for mine, ref in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(mine.to_dense(), ref, rtol=1e-5, atol=1e-5)
    assert not torch.equal(grads[0][0], upstream)  # the span's term was exercised


def test_channel_again_recomputes_the_same_values_without_autograd():
    torch.manual_seed(1)
    weight = torch.randn(8, 24, requires_grad=True)
    unit = torch.full((24,), 0.2, requires_grad=True)
    noise = torch.rand(192) - 0.5
    out, again = channel_noisy_and_again(weight, unit, noise, 8, 1.0)
    recomputed = again()
    assert not recomputed.requires_grad
    torch.testing.assert_close(recomputed, out.detach())
