"""The learned grid's noisy weight (quant/gridnoise.py) against the same formula in plain
autograd: values and the gradients to the weight, alpha and the bits."""

import pytest
import torch

from diffq_cli.quant.gridnoise import LearnedNoisy, learned_noisy_and_again
from diffq_cli.quant.grids import per_group, per_row, rows_of


def _reference(weight, alpha, bits, noise, group_size, mult):
    alpha_e = per_row(alpha, weight.shape)
    step = alpha_e * torch.exp2(1 - per_group(bits, weight.numel(), group_size))
    w = weight.reshape(-1)
    # the mid-rise levels' extremes: +-(alpha - step / 2)
    clamped = torch.maximum(torch.minimum(w, alpha_e - step / 2), step / 2 - alpha_e)
    return (clamped + noise * step * mult).view(weight.shape)


# whole groups per row (the blocked path), groups straddling rows, a short last group, a 1-D
# weight (one row)
@pytest.mark.parametrize("shape", [(4, 16, 3, 3), (12, 32), (16, 3, 3, 3), (10, 13), (64,)])
@pytest.mark.parametrize("chunk", [1 << 16, 100])  # one slice of rows, or several (and a rest)
def test_values_and_gradients_match_plain_autograd(shape, chunk, monkeypatch):
    from diffq_cli.quant import gridnoise

    monkeypatch.setattr(gridnoise, "CHUNK", chunk)
    torch.manual_seed(0)
    weight = torch.randn(shape, requires_grad=True)
    numel, gs = weight.numel(), 8
    # alpha under the largest magnitudes: some weights are clipped at either end
    alpha = (0.6 * weight.detach().abs().reshape(rows_of(shape)[0], -1).amax(1)).requires_grad_()
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
