"""Tensor kernels shared by the quantizers: group views, the noisy weight, true quantization.

Every kernel works on a flat weight split into ``full`` groups of ``group_size`` values and an
optional shorter tail group, so a group size that does not divide the tensor needs no padding copy.
"""

import functools
import math

import torch

_ROW = 4096  # row length of the two-stage arg-max search


def rows_of(shape) -> tuple[int, int]:
    """(rows, values per row) of a weight: dim 0 is the channel; a 1-D tensor is one row."""
    numel = math.prod(shape)
    rows = shape[0] if len(shape) >= 2 and shape[0] > 0 else 1
    return rows, numel // rows


def per_group(x: torch.Tensor, numel: int, group_size: int) -> torch.Tensor:
    """Per-element copy (numel,) of one value per group (the last group may be shorter)."""
    full = numel // group_size
    out = x[:full].repeat_interleave(group_size)
    if numel > full * group_size:
        out = torch.cat([out, x[full:].expand(numel - full * group_size)])
    return out


def per_row(x: torch.Tensor, shape) -> torch.Tensor:
    """Per-element copy (numel,) of one value per row."""
    return x.repeat_interleave(rows_of(shape)[1])


def split_groups(flat: torch.Tensor, group_size: int):
    """(main part viewed as (full, group_size), tail) of a flat tensor; the tail may be empty."""
    full = flat.numel() // group_size
    main = flat[: full * group_size].view(full, group_size)
    return main, flat[full * group_size :]


def group_sums(flat: torch.Tensor, group_size: int) -> torch.Tensor:
    """Sum of each group of a flat tensor (one per group; the last group may be shorter)."""
    main, tail = split_groups(flat, group_size)
    sums = main.sum(1)
    return torch.cat([sums, tail.sum().view(1)]) if tail.numel() else sums


def range_with_hint(flat: torch.Tensor):
    """(min, max, hint) of a flat tensor; ``hint`` lets ``extreme_indices`` (in the backward)
    find where the max and min are by searching one row of ``_ROW`` values, not the tensor.

    Large tensors are reduced row by row and the winning rows kept as 0-d tensors: no host
    sync, and the backward no longer reads the whole weight twice for its arg-max and
    arg-min. (Row-wise ``amax`` and ``amin`` are vectorized; a row-wise ``aminmax`` is 15x
    slower, and a whole-tensor ``aminmax`` slower than the two row-wise passes.)
    """
    n = flat.numel()
    if n <= 4 * _ROW:
        low, high = torch.aminmax(flat)
        return low, high, None
    cut = n // _ROW * _ROW
    rows = flat[:cut].view(-1, _ROW)
    row_min, row_max = rows.amin(1), rows.amax(1)
    if cut < n:  # the tail is one more (shorter) row
        tail_min, tail_max = torch.aminmax(flat[cut:])
        row_min = torch.cat([row_min, tail_min.view(1)])
        row_max = torch.cat([row_max, tail_max.view(1)])
    r_max, r_min = row_max.argmax(), row_min.argmin()
    return row_min[r_min], row_max[r_max], torch.stack([r_max, r_min])


def extreme_indices(flat: torch.Tensor, hint) -> torch.Tensor:
    """Flat indices of the max and of the min of ``flat`` (as given by ``range_with_hint``)."""
    if hint is None:
        return torch.stack([flat.argmax(), flat.argmin()])
    # Both winning rows at once; indices past the end (a short tail row) are clamped to the
    # last value, which belongs to that row: a duplicate cannot win over the true extreme.
    idx = torch.add(_columns(flat.device), hint[:, None], alpha=_ROW)
    idx.clamp_max_(flat.numel() - 1)
    rows = flat[idx]
    best = torch.stack([rows[0].argmax(), rows[1].argmin()])
    return idx.gather(1, best[:, None]).view(2)


# Small constant tensors, made once per device (and shape): no host-to-device copy per step.
@functools.cache
def _columns(device: torch.device) -> torch.Tensor:
    return torch.arange(_ROW, device=device)[None, :].expand(2, _ROW)


@functools.cache
def _signs(device: torch.device) -> torch.Tensor:
    return torch.tensor([1.0, -1.0], device=device)


@functools.cache
def _strides_and_sizes(shape: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    strides = [math.prod(shape[d + 1 :]) for d in range(len(shape))]
    return (torch.tensor(strides, device=device)[:, None],
            torch.tensor(list(shape), device=device)[:, None])


def _coords(idx: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """(ndim, n) coordinates of flat indices in a contiguous tensor of ``shape``."""
    strides, sizes = _strides_and_sizes(tuple(shape), idx.device)
    return torch.div(idx[None, :], strides, rounding_mode="floor").remainder_(sizes)


def sparse_at(idx: torch.Tensor, vals: torch.Tensor, shape) -> torch.Tensor:
    """A sparse tensor of ``shape`` holding ``vals`` at the flat indices ``idx``: a gradient on
    a few entries (a range's extremes) that autograd adds into the dense one in place."""
    return torch.sparse_coo_tensor(_coords(idx, shape), vals, shape, check_invariants=False)


class NoisyWeight(torch.autograd.Function):
    """``w + noise * unit * mult * (max(w) - min(w))`` per group, with a cheap exact backward.

    ``unit`` holds one noise scale per group for a unit range (``sign / (2 * (2**bits - 1))`` for
    gaussian noise). Forward is one min/max reduction and one ``addcmul``. Backward returns the
    incoming gradient itself for ``w`` (plus the range term on two entries), one fused
    reduction for ``unit`` and no dense temporary for the max/min gradient.
    """

    @staticmethod
    def forward(ctx, range_weight, weight, unit, noise, span, hint, group_size, mult):
        # ``range_weight`` is ``weight`` again: the max/min gradient is returned for it as a
        # 2-entry sparse tensor, which autograd adds into the dense gradient in place when it
        # may (and out of place when the dense one is shared), so no weight-sized copy is made.
        # ``span`` (max - min) and ``hint`` (where the extremes are, see ``range_with_hint``)
        # come from the one range pass of ``noisy_weight_and_again``; constants here.
        ctx.save_for_backward(weight, unit, noise, span, hint)
        ctx.group_size, ctx.mult = group_size, mult
        return _add_noise(weight, unit, noise, span, group_size, mult)

    @staticmethod
    def backward(ctx, grad):
        weight, unit, noise, span, hint = ctx.saved_tensors
        gs = ctx.group_size
        gflat = grad.reshape(-1)
        gf = gflat if gflat.dtype == torch.float32 else gflat.float()
        gmain, gtail = split_groups(gf, gs)
        nmain, ntail = split_groups(noise, gs)
        # r[g] = sum over group g of grad * noise: the derivative wrt that group's factor.
        parts = []
        if gmain.shape[0]:
            parts.append(torch.bmm(gmain.unsqueeze(1), nmain.unsqueeze(2)).view(-1))
        if gtail.numel():
            parts.append(torch.dot(gtail, ntail).view(1))
        r = parts[0] if len(parts) == 1 else torch.cat(parts)
        grad_unit = r * (span * ctx.mult) if ctx.needs_input_grad[2] else None
        grad_range = None
        if ctx.needs_input_grad[0]:
            # d out / d span = sum_g unit_g * r_g, and d span / d w = e_argmax - e_argmin.
            dspan = torch.dot(r, unit)
            idx = extreme_indices(weight.detach().reshape(-1), hint)
            vals = _signs(grad.device).mul(dspan * ctx.mult).to(grad.dtype)
            grad_range = sparse_at(idx, vals, weight.shape)
        grad_weight = grad if ctx.needs_input_grad[1] else None
        return grad_range, grad_weight, grad_unit, None, None, None, None, None


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


def minmax_levels(flat: torch.Tensor, bits: torch.Tensor, group_size: int, qmax=None,
                  narrow: bool = True):
    """True quantization of a flat tensor on its [min, max] range, per group.

    Args:
        flat: 1-D float tensor.
        bits: integer bit width per group (G,), used for ``qmax = 2**bits - 1`` unless given.
        group_size: values per group (the last group may be shorter).
        qmax: optional per-group (or scalar) largest level, for fractional uniform bits.
        narrow: store the levels as integers (for packing); False keeps them float32, which
            also avoids the host sync that choosing the integer type needs on a GPU.

    Returns:
        (levels (numel,) as uint8 when every width is at most 8 bits, else int16 (float32
        with ``narrow=False``); low, high, qmax per group as float32).
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
    if not narrow:
        return levels.round_(), low, high, qmax
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
        # Float levels: a training step must not wait for the device (no integer-type choice).
        levels, low, high, qmax = minmax_levels(flat, bits, group_size, qmax, narrow=False)
        q = minmax_dequantize(levels, low, high, qmax, group_size).to(flat.dtype)
    return (flat + (q - flat).detach()).view_as(weight)


def noisy_weight(weight, unit, noise, group_size: int, mult: float) -> torch.Tensor:
    """``weight`` plus pseudo quantization noise; see ``NoisyWeight``."""
    return noisy_weight_and_again(weight, unit, noise, group_size, mult)[0]


def noisy_weight_and_again(weight, unit, noise, group_size: int, mult: float):
    """``noisy_weight`` and a function that computes the same values again without autograd
    (so that a backward can recompute the noisy weight instead of keeping it alive)."""
    with torch.no_grad():
        low, high, hint = range_with_hint(_float_flat(weight))
        span = high - low
    out = NoisyWeight.apply(weight, weight, unit, noise, span, hint, group_size, mult)
    unit = unit.detach()

    def again() -> torch.Tensor:
        with torch.no_grad():
            return _add_noise(weight, unit, noise, span, group_size, mult)

    return out, again
