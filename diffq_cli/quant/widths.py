"""The learned bit widths: parametrisations of every group's real-valued width by one number.

- ``bits`` (the paper's): ``b = lo + (hi - lo) * sigmoid(x)``. Adam moves ``x`` by about the
  learning rate per step whatever the gradient's size, and the sigmoid is flat near its ends:
  a group at 3 of [2, 15] bits moves ~0.07 bit per 0.01 of ``x``, so in a short fine-tune the
  widths barely leave their start.
- ``noise``: the noise unit ``1 / (2**b - 1)`` interpolated in log space (the reference's other
  option).
A width at the floor starts ``FLOOR_NOISE`` above ``min_bits`` (a sigmoid's logit at the bound
proper would be infinite and never move again).
"""

import math
import weakref

import torch

MODES = ("bits", "noise")
FLOOR_NOISE = 0.3  # bits above min_bits where a width placed at the floor starts


class BitsAndUnit(torch.autograd.Function):
    """Learned bits and noise unit (``1 / (2**bits - 1)``) of every group from the parameters
    of several tensors at once (concatenated in their order).

    One Function instead of a cat -> sigmoid -> affine -> exp2 -> reciprocal chain: it saves
    only references to the parameters (the chain kept four group-sized tensors alive until the
    backward) and recomputes the cheap elementwise values there, in place.

    ``lo``, ``hi``: the width range (the log units for ``noise``). Call as
    ``BitsAndUnit.apply(lo, hi, mode, *params)``.
    """

    @staticmethod
    def forward(ctx, lo, hi, mode, *logits):
        flat = torch.cat([x.detach().reshape(-1).float() for x in logits])
        if mode == "noise":
            unit = torch.sigmoid(flat).mul_(hi - lo).add_(lo).exp_()
            bits = unit.reciprocal().add_(1).log2_()
        else:
            bits = torch.sigmoid(flat).mul_(hi - lo).add_(lo)
            unit = torch.exp2(bits).sub_(1).reciprocal_()
        ctx.save_for_backward(*logits)  # the parameters themselves: no copy
        ctx.lo, ctx.hi, ctx.mode = lo, hi, mode
        return bits, unit

    @staticmethod
    def backward(ctx, grad_bits, grad_unit):
        # In place wherever possible: this runs at the end of the backward, when every weight
        # gradient is alive, so each group-sized temporary adds to the step's peak memory.
        logits = ctx.saved_tensors
        lo, hi = ctx.lo, ctx.hi
        flat = torch.cat([x.reshape(-1).float() for x in logits])
        grad = _sigmoid_grad(flat, lo, hi, ctx.mode == "noise", grad_bits, grad_unit)
        sizes = [x.numel() for x in logits]
        parts = grad.split(sizes)
        return (None, None, None,
                *(g.view(x.shape).to(x.dtype) for g, x in zip(parts, logits, strict=True)))


def _sigmoid_grad(flat, lo, hi, noise_param: bool, grad_bits, grad_unit):
    t = torch.sigmoid(flat)
    if noise_param:
        grad = torch.mul(t, hi - lo).add_(lo).exp_()  # unit
        # d unit = unit * d(log unit); d bits / d unit = -1 / (ln2 * unit * (unit + 1))
        if grad_bits is not None:
            scale = grad.add(1).mul_(math.log(2)).reciprocal_().mul_(grad_bits)
            grad.mul_(grad_unit).sub_(scale)
            del scale
        else:
            grad.mul_(grad_unit)
    else:
        grad = _unit_grad(torch.mul(t, hi - lo).add_(lo), grad_bits, grad_unit)
    grad.mul_(t)  # d sigmoid = t * (1 - t), times the affine's slope
    return grad.mul_(t.neg_().add_(1)).mul_(hi - lo)


def _unit_grad(bits, grad_bits, grad_unit):
    """d loss / d bits through the unit (``1 / (2**b - 1)``) and the bits themselves."""
    grad = bits.exp2_().sub_(1).reciprocal_()  # unit, in the bits' buffer
    # d unit / d bits = -ln2 * unit * (unit + 1) = -ln2 * (unit + unit**2)
    grad.addcmul_(grad, grad).mul_(grad_unit).mul_(-math.log(2))
    if grad_bits is not None:
        grad.add_(grad_bits)
    return grad


def unit_bounds(min_bits: float, max_bits: float) -> tuple[float, float]:
    """log of the noise unit (1 / (2**b - 1)) at max_bits and at min_bits (``noise`` mode)."""
    return -math.log(2**max_bits - 1), -math.log(2**min_bits - 1)


def init_value(mode: str, init_bits: float, min_bits: float, max_bits: float) -> float:
    """The parameter value that gives the width ``init_bits`` in ``mode``."""
    if max_bits == min_bits:
        return 0.0
    if mode == "bits":
        t = (init_bits - min_bits) / (max_bits - min_bits)
    else:
        lo, hi = unit_bounds(min_bits, max_bits)
        t = (-math.log(2**init_bits - 1) - lo) / (hi - lo)
    t = min(max(t, 1e-4), 1 - 1e-4)  # init at a bound would need an infinite logit
    return math.log(t / (1 - t))


def forget_hook(quantizer, entry):
    """Gradient hook dropping ``entry`` from the bits cache once a backward runs through it.

    That backward frees the graph, so ``loss.backward(); quantizer.model_size().backward()``
    must build a new one. Holds the quantizer weakly: no reference cycle through the graph.
    """
    ref = weakref.ref(quantizer)
    token = id(entry)

    def forget(grad):
        q = ref()
        if q is not None and q._bits_cache is not None and id(q._bits_cache) == token:
            q._bits_cache = None

    return forget
