"""DiffQ's noisy training weight on the ``learned`` grid, without weight-sized autograd state.

The weight is clamped to the range true quantization keeps, ``[-alpha, alpha - step]`` with
``step = alpha * 2**(1 - b)`` (``alpha`` per output row, ``b`` per group), plus noise scaled by
the same step. Written with plain autograd ops this keeps five or six weight-sized float
tensors per layer alive until the backward (11x the weights of extra memory on resnet18, and
1.95x the float step). ``LearnedNoisy`` saves only the weight, the noise window and the small
``alpha`` and ``b`` vectors, and computes the gradients to all three from them in the backward:

    out = clamp(w, -alpha, alpha - step) + noise * step * mult
    d/dw     = g                                          inside the range, else 0
    d/dstep  = g * noise * mult - g * [w >= alpha - step]
    d/dalpha = sum over the row of  g * ([w >= alpha - step] - [w <= -alpha])
                                     + d/dstep * step / alpha
    d/db     = sum over the group of  d/dstep * step * (-ln 2)
"""

import math

import torch

from diffq_cli.quant.grids import per_group, per_row, rows_of


def _step_and_range(weight, alpha, bits, group_size: int):
    """Per element: the weight as float32, ``alpha``, ``2**(1 - b)`` and the step."""
    w = weight.detach().reshape(-1).float()
    alpha_e = per_row(alpha.detach().float(), weight.shape)
    scale = torch.exp2(1 - per_group(bits.detach().float(), w.numel(), group_size))
    return w, alpha_e, scale, alpha_e * scale


def _noisy(weight, alpha, bits, noise, group_size: int, mult: float) -> torch.Tensor:
    w, alpha_e, _, step = _step_and_range(weight, alpha, bits, group_size)
    out = torch.minimum(w, alpha_e - step)
    torch.maximum(out, alpha_e.neg_(), out=out)
    return out.addcmul_(noise, step, value=mult).view(weight.shape).to(weight.dtype)


class LearnedNoisy(torch.autograd.Function):
    """``out = clamp(w, -alpha, alpha - step) + noise * step * mult`` (see the module
    docstring); gradients to ``weight``, ``alpha`` (rows,) and ``bits`` (groups,)."""

    @staticmethod
    def forward(ctx, weight, alpha, bits, noise, group_size, mult):
        ctx.save_for_backward(weight, alpha, bits, noise)
        ctx.group_size, ctx.mult = group_size, mult
        return _noisy(weight, alpha, bits, noise, group_size, mult)

    @staticmethod
    def backward(ctx, grad):
        weight, alpha, bits, noise = ctx.saved_tensors
        gs, mult = ctx.group_size, ctx.mult
        # One weight-sized temporary at a time where possible: this runs per layer, inside
        # the backward, where the other layers' activations are still alive.
        w, alpha_e, scale, step = _step_and_range(weight, alpha, bits, gs)
        g = grad.reshape(-1).float()
        top = w >= alpha_e - step
        bottom = w <= alpha_e.neg_()  # alpha_e is not needed after this
        del alpha_e
        grad_w = grad_alpha = grad_bits = None
        if ctx.needs_input_grad[0]:
            grad_w = g.masked_fill(top | bottom, 0).view(weight.shape).to(weight.dtype)
        dstep = torch.mul(g, noise).mul_(mult)
        dstep[top] -= g[top]  # the clipped weights are few: indexing beats a dense product
        if ctx.needs_input_grad[1]:
            edge = scale.mul_(dstep)  # scale is not needed after this
            edge[top] += g[top]
            edge[bottom] -= g[bottom]
            grad_alpha = edge.view(rows_of(weight.shape)[0], -1).sum(1).to(alpha.dtype)
            del edge, scale
        if ctx.needs_input_grad[2]:
            per_weight = dstep.mul_(step).mul_(-math.log(2.0))
            full = w.numel() // gs
            sums = [per_weight[: full * gs].view(full, gs).sum(1)]
            if w.numel() > full * gs:
                sums.append(per_weight[full * gs:].sum().view(1))
            grad_bits = torch.cat(sums).to(bits.dtype)
        return grad_w, grad_alpha, grad_bits, None, None, None


def learned_noisy_and_again(weight, alpha, bits, noise, group_size: int, mult: float):
    """The noisy weight (``LearnedNoisy``) and a function computing the same values again
    without autograd, so that a backward can recompute it instead of keeping it alive
    (``install.py``). ``alpha``: one per row; ``bits``: one per group."""
    out = LearnedNoisy.apply(weight, alpha, bits, noise, group_size, mult)
    alpha, bits = alpha.detach(), bits.detach()

    def again() -> torch.Tensor:
        with torch.no_grad():
            return _noisy(weight, alpha, bits, noise, group_size, mult)

    return out, again
