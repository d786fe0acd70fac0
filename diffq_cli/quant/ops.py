"""Tensor kernels shared by the quantizers: group views, the noisy weight, true quantization.

Every kernel works on a flat weight split into ``full`` groups of ``group_size`` values and an
optional shorter tail group, so a group size that does not divide the tensor needs no padding copy.
"""

import math

import torch

_ROW = 4096  # row length of the two-stage arg-max search


def split_groups(flat: torch.Tensor, group_size: int):
    """(main part viewed as (full, group_size), tail) of a flat tensor; the tail may be empty."""
    full = flat.numel() // group_size
    main = flat[: full * group_size].view(full, group_size)
    return main, flat[full * group_size :]


def _arg_extreme(flat: torch.Tensor, largest: bool) -> torch.Tensor:
    """Index of the max (or min) of ``flat`` as a 0-d tensor, without a host sync.

    ``argmax`` over millions of values is several times slower than a row-wise ``amax``; reduce
    rows first, then search inside the winning row only.
    """
    n = flat.numel()
    if n <= 4 * _ROW:
        return flat.argmax() if largest else flat.argmin()
    rows = flat[: n // _ROW * _ROW].view(-1, _ROW)
    row_best = rows.amax(1) if largest else rows.amin(1)
    r = row_best.argmax() if largest else row_best.argmin()
    row = rows.index_select(0, r.view(1)).view(-1)
    col = row.argmax() if largest else row.argmin()
    index = r * _ROW + col
    tail = flat[n // _ROW * _ROW :]
    if tail.numel():
        t = (tail.argmax() if largest else tail.argmin()) + n // _ROW * _ROW
        better = flat[t] > flat[index] if largest else flat[t] < flat[index]
        index = torch.where(better, t, index)
    return index


class NoisyWeight(torch.autograd.Function):
    """``w + noise * unit * mult * (max(w) - min(w))`` per group, with a cheap exact backward.

    ``unit`` holds one noise scale per group for a unit range (``sign / (2 * (2**bits - 1))`` for
    gaussian noise). Forward is one min/max reduction and one ``addcmul``. Backward returns the
    incoming gradient itself for ``w`` (plus the range term on two entries), one fused
    reduction for ``unit`` and no dense temporary for the max/min gradient.
    """

    @staticmethod
    def forward(ctx, range_weight, weight, unit, noise, span, group_size, mult):
        # ``range_weight`` is ``weight`` again: the max/min gradient is returned for it as a
        # 2-entry sparse tensor, which autograd adds into the dense gradient in place when it
        # may (and out of place when the dense one is shared), so no weight-sized copy is made.
        # ``span`` (max - min, computed by ``noisy_weight``) is a constant here.
        ctx.save_for_backward(weight, unit, noise, span)
        ctx.group_size, ctx.mult = group_size, mult
        return _add_noise(weight, unit, noise, span, group_size, mult)

    @staticmethod
    def backward(ctx, grad):
        weight, unit, noise, span = ctx.saved_tensors
        gs = ctx.group_size
        gflat = grad.reshape(-1)
        gf = gflat if gflat.dtype == torch.float32 else gflat.float()
        gmain, gtail = split_groups(gf, gs)
        nmain, ntail = split_groups(noise, gs)
        # r[g] = sum over group g of grad * noise: the derivative wrt that group's factor.
        parts = []
        if gmain.shape[0]:
            parts.append(torch.einsum("gk,gk->g", gmain, nmain))
        if gtail.numel():
            parts.append(torch.dot(gtail, ntail).view(1))
        r = parts[0] if len(parts) == 1 else torch.cat(parts)
        grad_unit = r * (span * ctx.mult) if ctx.needs_input_grad[2] else None
        grad_range = None
        if ctx.needs_input_grad[0]:
            # d out / d span = sum_g unit_g * r_g, and d span / d w = e_argmax - e_argmin.
            dspan = torch.dot(r, unit) * ctx.mult
            wflat = weight.detach().reshape(-1)
            idx = torch.stack([_arg_extreme(wflat, True), _arg_extreme(wflat, False)])
            vals = torch.stack([dspan, -dspan]).to(grad.dtype)
            coords = torch.stack(torch.unravel_index(idx, weight.shape))
            grad_range = torch.sparse_coo_tensor(
                coords, vals, weight.shape, check_invariants=False
            )
        grad_weight = grad if ctx.needs_input_grad[1] else None
        return grad_range, grad_weight, grad_unit, None, None, None, None


def _float_flat(weight: torch.Tensor) -> torch.Tensor:
    flat = weight.detach().reshape(-1)
    return flat if flat.dtype == torch.float32 else flat.float()


def _add_noise(weight, unit, noise, span, group_size: int, mult: float) -> torch.Tensor:
    """``weight + noise * unit * span * mult`` per group: one ``addcmul`` per part."""
    flat = _float_flat(weight)
    factor = unit.detach() * (span * mult)
    out = torch.empty_like(flat)
    main, tail = split_groups(flat, group_size)
    nmain, ntail = split_groups(noise, group_size)
    omain, otail = split_groups(out, group_size)
    full = main.shape[0]
    if full:
        torch.addcmul(main, nmain, factor[:full, None], out=omain)
    if tail.numel():
        torch.addcmul(tail, ntail, factor[full:], out=otail)
    return out.view(weight.shape).to(weight.dtype)


class BitsAndUnit(torch.autograd.Function):
    """Learned bits and noise unit (``1 / (2**bits - 1)``) of every group from the logits of
    several parameters at once (concatenated in their order).

    One Function instead of a cat -> sigmoid -> affine -> exp2 -> reciprocal chain: it saves
    only references to the logit parameters (the chain kept four group-sized tensors alive until
    the backward) and recomputes the cheap elementwise values there, in place.

    ``param="bits"``: ``bits = lo + (hi - lo) * sigmoid(logit)``; ``param="noise"``: ``log(unit)
    = lo + (hi - lo) * sigmoid(logit)`` (``lo``, ``hi`` are then the log units).

    Call as ``BitsAndUnit.apply(lo, hi, noise_param, *logits)``.
    """

    @staticmethod
    def forward(ctx, lo, hi, noise_param, *logits):
        flat = torch.cat([x.detach().reshape(-1).float() for x in logits])
        t = torch.sigmoid(flat)
        if noise_param:
            unit = t.mul_(hi - lo).add_(lo).exp_()
            bits = unit.reciprocal().add_(1).log2_()
        else:
            bits = t.mul_(hi - lo).add_(lo)
            unit = torch.exp2(bits).sub_(1).reciprocal_()
        ctx.save_for_backward(*logits)  # the parameters themselves: no copy
        ctx.lo, ctx.hi, ctx.noise_param = lo, hi, noise_param
        return bits, unit

    @staticmethod
    def backward(ctx, grad_bits, grad_unit):
        # In place wherever possible: this runs at the end of the backward, when every weight
        # gradient is alive, so each group-sized temporary adds to the step's peak memory.
        logits = ctx.saved_tensors
        lo, hi = ctx.lo, ctx.hi
        t = torch.sigmoid(torch.cat([x.reshape(-1).float() for x in logits]))
        if ctx.noise_param:
            grad = torch.mul(t, hi - lo).add_(lo).exp_()  # unit
            # d unit = unit * d(log unit); d bits / d unit = -1 / (ln2 * unit * (unit + 1))
            if grad_bits is not None:
                scale = grad.add(1).mul_(math.log(2)).reciprocal_().mul_(grad_bits)
                grad.mul_(grad_unit).sub_(scale)
                del scale
            else:
                grad.mul_(grad_unit)
        else:
            grad = torch.mul(t, hi - lo).add_(lo).exp2_().sub_(1).reciprocal_()  # unit
            # d unit / d bits = -ln2 * unit * (unit + 1) = -ln2 * (unit + unit**2)
            grad.addcmul_(grad, grad).mul_(grad_unit).mul_(-math.log(2))
            if grad_bits is not None:
                grad.add_(grad_bits)
        grad.mul_(t)  # d sigmoid = t * (1 - t), times the affine's slope
        grad.mul_(t.neg_().add_(1)).mul_(hi - lo)
        sizes = [x.numel() for x in logits]
        parts = grad.split(sizes)
        return (None, None, None,
                *(g.view(x.shape).to(x.dtype) for g, x in zip(parts, logits, strict=True)))


def minmax_levels(flat: torch.Tensor, bits: torch.Tensor, group_size: int, qmax=None):
    """True quantization of a flat tensor on its [min, max] range, per group.

    Args:
        flat: 1-D float tensor.
        bits: integer bit width per group (G,), used for ``qmax = 2**bits - 1`` unless given.
        group_size: values per group (the last group may be shorter).
        qmax: optional per-group (or scalar) largest level, for fractional uniform bits.

    Returns:
        (levels (numel,) as uint8 when every width is at most 8 bits, else int16; low, high,
        qmax per group as float32).
    """
    flat = flat.detach().float()
    low, high = torch.aminmax(flat)
    if qmax is None:
        qmax = torch.pow(2.0, bits.float()) - 1
    qmax = torch.as_tensor(qmax, dtype=torch.float32, device=flat.device).expand(bits.shape)
    span = (high - low).clamp_min(torch.finfo(torch.float32).tiny)
    inv_delta = qmax / span
    shift = -low * inv_delta  # (w - low) * inv == w * inv + shift: one fused addcmul per group
    levels = torch.empty_like(flat)
    main, tail = split_groups(flat, group_size)
    lmain, ltail = split_groups(levels, group_size)
    full = main.shape[0]
    if full:
        torch.addcmul(shift[:full, None], main, inv_delta[:full, None], out=lmain)
    if tail.numel():
        torch.addcmul(shift[full:], tail, inv_delta[full:], out=ltail)
    # (w - low) / span lies in [0, 1], so rounding stays in [0, qmax] (a rounding error below
    # zero rounds to -0, which converts to 0). Narrow integers keep the packing passes cheap.
    dtype = torch.uint8 if float(qmax.max()) < 255.5 else torch.int16
    return levels.round_().to(dtype), low, high, qmax


def minmax_dequantize(levels, low, high, qmax, group_size: int) -> torch.Tensor:
    """``low + levels * (high - low) / qmax`` per group; float32, flat."""
    delta = (high - low) / qmax
    out = levels.float()
    main, tail = split_groups(out, group_size)
    full = main.shape[0]
    if full:
        main.mul_(delta[:full, None])
    if tail.numel():
        tail.mul_(delta[full:])
    return out.add_(low)


def straight_through(weight, bits, group_size: int, qmax=None) -> torch.Tensor:
    """``weight`` truly quantized (min/max levels at ``bits`` per group) in the forward, with
    the identity as gradient (straight-through estimator)."""
    flat = weight.reshape(-1)
    with torch.no_grad():
        levels, low, high, qmax = minmax_levels(flat, bits, group_size, qmax)
        q = minmax_dequantize(levels, low, high, qmax, group_size).to(flat.dtype)
    return (flat + (q - flat).detach()).view_as(weight)


def noisy_weight(weight, unit, noise, group_size: int, mult: float) -> torch.Tensor:
    """``weight`` plus pseudo quantization noise; see ``NoisyWeight``."""
    return noisy_weight_and_again(weight, unit, noise, group_size, mult)[0]


def noisy_weight_and_again(weight, unit, noise, group_size: int, mult: float):
    """``noisy_weight`` and a function that computes the same values again without autograd
    (so that a backward can recompute the noisy weight instead of keeping it alive)."""
    with torch.no_grad():
        low, high = torch.aminmax(_float_flat(weight))
        span = high - low
    out = NoisyWeight.apply(weight, weight, unit, noise, span, group_size, mult)
    unit = unit.detach()

    def again() -> torch.Tensor:
        with torch.no_grad():
            return _add_noise(weight, unit, noise, span, group_size, mult)

    return out, again
