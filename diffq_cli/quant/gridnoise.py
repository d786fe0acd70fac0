"""DiffQ's noisy training weight on the learned grid, without weight-sized autograd state.

The weight is clamped to the range true quantization keeps, ``[-alpha + step/2,
alpha - step/2]`` (the mid-rise levels' extremes) with ``step = alpha * 2**(1 - b)`` (``alpha``
per output row, ``b`` per group), plus noise scaled by the same step. Written with plain
autograd ops this keeps five or six weight-sized float tensors per layer alive until the
backward (11x the weights of extra memory on resnet18, and 1.95x the float step).
``LearnedNoisy`` saves only the weight, the noise window and the small ``alpha`` and ``b``
vectors, and computes the gradients to all three from them in the backward, with ``e`` the
side of the range a value is on (+1 above, -1 below, 0 inside):

    out = clamp(w, -alpha + step/2, alpha - step/2) + noise * step * mult
    d/dw     = g                                          inside the range, else 0
    d/dstep  = g * noise * mult - g * e / 2
    d/dalpha = sum over the row of  g * e  +  d/dstep * step / alpha
    d/db     = sum over the group of  d/dstep * step * (-ln 2)
"""

import math

import torch

from diffq_cli.quant.ops import group_sums, per_group, per_row, rows_of

CHUNK = 1 << 18  # values per slice of rows (1 MiB of float32): passes stay in cache


def _parts(weight, alpha, bits, group_size: int):
    """(weight as float32, ``high = alpha - step / 2``, 2**(1 - b), step), broadcastable
    against each other: the range true quantization keeps is ``[-high, high]``, defined here
    only.

    When a row holds whole groups (most layers), the weight is viewed as (rows, groups per row,
    group_size) and high, the scale and the step stay one value per row or group: no
    weight-sized copy. Otherwise (a row length that is not a multiple of the group size, e.g. a
    first conv on one input channel) they are expanded to one value per element."""
    w = weight.detach().reshape(-1).float()
    rows, cols = rows_of(weight.shape)
    alpha, bits = alpha.detach().float(), bits.detach().float()
    if cols % group_size == 0:
        w = w.view(rows, cols // group_size, group_size)
        alpha = alpha.view(rows, 1, 1)
        scale = torch.exp2(1 - bits).view(rows, cols // group_size, 1)
    else:
        alpha = per_row(alpha, weight.shape)
        scale = torch.exp2(1 - per_group(bits, w.numel(), group_size))
    step = alpha * scale
    return w, alpha - step * 0.5, scale, step


def _chunks(w: torch.Tensor):
    """Row slices of a blocked (rows, groups, group_size) weight, about ``CHUNK`` values each:
    every pass over a slice then runs from cache, and a backward's temporaries are a slice's
    size instead of the weight's (the largest layer's set the memory peak)."""
    rows = w.shape[0]
    step = max(1, CHUNK // max(1, w[0].numel()))
    return [slice(r, min(r + step, rows)) for r in range(0, rows, step)]


def _noisy(weight, alpha, bits, noise, group_size: int, mult: float) -> torch.Tensor:
    w, high, _, step = _parts(weight, alpha, bits, group_size)
    noise = noise.view(w.shape)
    low = -high
    if w.dim() != 3:
        out = torch.clamp(w, low, high)
        return out.addcmul_(noise, step, value=mult).view(weight.shape).to(weight.dtype)
    out = torch.empty_like(w)
    for sl in _chunks(w):
        part = out[sl]
        # One clamp with both bounds: a minimum then a maximum against per-group bounds is
        # ~1.35x slower here.
        torch.clamp(w[sl], low[sl], high[sl], out=part)
        part.addcmul_(noise[sl], step[sl], value=mult)
    return out.view(weight.shape).to(weight.dtype)


class LearnedNoisy(torch.autograd.Function):
    """``out = clamp(w, -alpha + step/2, alpha - step/2) + noise * step * mult`` (see the module
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
        w, high, scale, step = _parts(weight, alpha, bits, gs)
        g = grad.reshape(w.shape).float()
        noise = noise.view(w.shape)
        if w.dim() == 3:  # whole groups per row: every sum is over the last axis
            grad_w, grad_alpha, grad_bits = _blocked_grads(w, g, noise, high, scale, step,
                                                           mult, ctx.needs_input_grad[0])
        else:
            top = w >= high
            bottom = w <= -high
            grad_w = None
            if ctx.needs_input_grad[0]:
                grad_w = g.masked_fill(top | bottom, 0)
            grad_alpha, grad_bits = _flat_grads(g, noise, top, bottom, scale, step, gs, mult,
                                                rows_of(weight.shape)[0])
        if grad_w is not None:
            grad_w = grad_w.view(weight.shape).to(weight.dtype)
        return grad_w, grad_alpha.to(alpha.dtype), grad_bits.to(bits.dtype), None, None, None


def _blocked_grads(w, g, noise, high, scale, step, mult: float, want_w: bool):
    """(d/dweight or None, d/dalpha per row, d/db per group) for a blocked weight, a chunk of
    rows at a time (``_chunks``).

    Only float arithmetic, no boolean masks: on a CPU a comparison, a masked fill or a product
    with a mask costs 3-8x a float product, so the side of the range each value is on is
    ``e = sign(w - clamp(w))`` (+1 above, -1 below, 0 inside), ``g * [inside] = g - (g * e) *
    e``, and d/dstep is one product-sum per group (P1 1.63 -> 1.52x, docs/benchmarks.md)."""
    rows, groups, _ = w.shape
    grad_w = torch.empty_like(w) if want_w else None
    grad_alpha = torch.empty(rows, dtype=torch.float32, device=w.device)
    grad_bits = torch.empty(rows, groups, dtype=torch.float32, device=w.device)
    low = -high
    for sl in _chunks(w):
        wc, gc = w[sl], g[sl]
        side = torch.clamp(wc, low[sl], high[sl])
        torch.sub(wc, side, out=side).sign_()
        g_side = gc * side  # g * (top - bottom)
        if want_w:
            torch.addcmul(gc, g_side, side, value=-1.0, out=grad_w[sl])
        # d/dstep per group: sum of g * (noise * mult - side / 2), as one product and sum.
        side_minus_noise = torch.add(side, noise[sl], alpha=-2.0 * mult)
        dstep = torch.einsum("rgk,rgk->rg", gc, side_minus_noise).mul_(-0.5).unsqueeze(-1)
        grad_alpha[sl] = g_side.sum((1, 2)) + (dstep * scale[sl]).sum((1, 2))
        grad_bits[sl] = dstep.mul_(step[sl]).mul_(-math.log(2.0)).squeeze(-1)
    return grad_w, grad_alpha, grad_bits.reshape(-1)


def _flat_grads(g, noise, top, bottom, scale, step, gs: int, mult: float, rows: int):
    """(d/dalpha per row, d/db per group) from per-element values (rows not made of whole
    groups)."""
    dstep = torch.mul(g, noise).mul_(mult)
    dstep[top] -= 0.5 * g[top]  # the clipped weights are few: indexing beats a dense product
    dstep[bottom] += 0.5 * g[bottom]
    edge = scale.mul(dstep)
    edge[top] += g[top]
    edge[bottom] -= g[bottom]
    grad_alpha = edge.view(rows, -1).sum(1)
    return grad_alpha, group_sums(dstep.mul_(step).mul_(-math.log(2.0)), gs)


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
