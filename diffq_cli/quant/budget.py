"""Sizes of a DiffQuantizer at chosen bit widths, and rounding that respects a size budget.

``true_model_size()`` rounds every group's learned real-valued bits to the nearest integer, so a
run whose differentiable size sits right at a budget can land a little above it. ``fit_budget``
lowers widths until the true size fits, cheapest groups first: a group whose learned bits sit
just above its rounding threshold (2.52 rounds to 3) wanted its width least, so it is lowered
first; a group at 2.98 is lowered only after every group closer to its threshold. Formally, all
real bits are shifted down by the smallest ``tau`` for which ``round(b - tau)`` fits, which is
exactly that order, and is found by bisection. ``fit_budget(..., fill=True)`` also raises
widths, in the mirror order, while a run under its budget still fits.

These helpers read the quantizer's groups directly (same package) and change only the bit
logits, so ``_true_bits``, ``get_quantized_state()`` and evaluation all see the new widths.
"""

import functools

import torch

from diffq_cli.quant import allocate
from diffq_cli.quant.sizes import tensor_bits
from diffq_cli.quant.widths import FLOOR_NOISE
from diffq_cli.units import MIB_BITS


def _check(quantizer) -> list:
    from diffq_cli.quant.diffq import DiffQuantizer

    if not isinstance(quantizer, DiffQuantizer):
        raise TypeError(f"expected a DiffQuantizer, got {type(quantizer).__name__}")
    return quantizer._qparams


def _int_bits(real: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(real), 1, 15).to(torch.int64)


def _size_mb(quantizer, unique, widths) -> float:
    """True size in MB with integer ``widths`` (one tensor per quantized parameter)."""
    total = quantizer._float_bits()
    for qp, bits in zip(unique, widths, strict=True):
        total += tensor_bits(bits, qp.numel, qp.group_size, quantizer._side_bits(qp))[1]
    return total / MIB_BITS


def size_at_bits(quantizer, bits: float, sizer=None) -> float:
    """True size in MB if every group had the real-valued width ``bits`` (before extra_bits);
    ``sizer``: as in ``start_at_size``.

    Example:
        >>> floor = size_at_bits(quantizer, quantizer.min_bits)   # the smallest reachable size
    """
    unique = _check(quantizer)
    width = int(_int_bits(torch.tensor(float(bits) + quantizer.extra_bits)))
    return (sizer or functools.partial(_size_mb, quantizer))(unique, _full(unique, width))


def size_floor(quantizer, sizer=None) -> float:
    """Smallest size in MB the quantizer can reach: every group at ``min_bits``."""
    _check(quantizer)
    return size_at_bits(quantizer, quantizer.min_bits, sizer)


def learned_bits(quantizer) -> list[torch.Tensor]:
    """Real-valued bits (plus ``extra_bits``) of every group, one tensor per parameter."""
    unique = _check(quantizer)
    with torch.no_grad():
        return [quantizer._bits_and_unit(qp.bit_param.detach())[0].cpu() + quantizer.extra_bits
                for qp in unique]


def logits_for_bits(quantizer, bits: torch.Tensor) -> torch.Tensor:
    """Logits whose real-valued bits are ``bits`` (inverse of the quantizer's parametrisation).

    Values are clamped into ``[min_bits, max_bits]``; a bound itself maps to a logit just
    inside it (a bound proper would need an infinite logit) whose rounding is unchanged.
    """
    lo_b, hi_b = quantizer.min_bits, quantizer.max_bits
    bits = bits.double().clamp(lo_b, hi_b)
    if hi_b == lo_b:
        return torch.zeros_like(bits, dtype=torch.float32)
    if quantizer.param == "bits":
        t = (bits - lo_b) / (hi_b - lo_b)
    else:  # the noise unit 1 / (2**b - 1) is interpolated in log space
        lo, hi = quantizer._unit_bounds()
        t = (-torch.log(torch.exp2(bits) - 1) - lo) / (hi - lo)
    t = t.clamp(1e-6, 1 - 1e-6)
    return torch.log(t / (1 - t)).float()


def set_uniform_bits(quantizer, bits: float) -> None:
    """Sets every group's learned width to the real value ``bits`` (a starting point)."""
    for qp in _check(quantizer):
        with torch.no_grad():
            qp.bit_param.fill_(float(logits_for_bits(quantizer, torch.tensor(float(bits)))))


def start_at_size(quantizer, target_mb: float, sensitivity: dict, sizer=None) -> float:
    """Sets starting widths whose true size is at most ``target_mb``, with no rounding surprise.

    Whole tensors get integer widths by expected loss per bit (``allocate.start_widths``;
    ``sensitivity``: {name: loss increase per unit of quantization noise variance, the summed
    squared gradients times the squared range}); the tensor next in line gets as many of its
    groups one bit wider as still fit, so the start spends the budget. Real bits sit exactly on
    those integers (``min_bits + FLOOR_NOISE`` at the bottom, where an exact bound would freeze
    the logit), so the training noise matches what rounding will give. Keeps ``init_bits`` when
    that already fits. Returns the resulting true size in MB. ``sizer(unique, widths) -> MiB``:
    the size to fit (default the true size; ``coded.CodedTables.widths_mb`` for the file).
    """
    unique = _check(quantizer)
    size_mb = sizer or functools.partial(_size_mb, quantizer)
    low = int(_int_bits(torch.tensor(quantizer.min_bits + quantizer.extra_bits)))
    high = int(_int_bits(torch.tensor(quantizer.init_bits + quantizer.extra_bits)))
    if size_mb(unique, _full(unique, high)) <= target_mb:
        set_uniform_bits(quantizer, quantizer.init_bits)
        return quantizer.true_model_size()
    widths, order = allocate.start_widths(unique, sensitivity, size_mb, target_mb, low, high)
    for i in order:
        allocate.raise_prefix(size_mb, unique, widths, i, torch.arange(unique[i].n_groups),
                              target_mb)
    for qp, width in zip(unique, widths, strict=True):
        real = width.double() - quantizer.extra_bits
        real = real.clamp_min(quantizer.min_bits + FLOOR_NOISE)  # a bound would freeze a logit
        with torch.no_grad():
            qp.bit_param.copy_(logits_for_bits(quantizer, real).to(qp.bit_param.device))
    return quantizer.true_model_size()


def integer_widths(quantizer) -> list[torch.Tensor] | None:
    """Each group's integer width now (as true quantization rounds it), one tensor per
    quantized parameter; None for a quantizer without learned widths."""
    from diffq_cli.quant.diffq import DiffQuantizer

    if not isinstance(quantizer, DiffQuantizer):
        return None
    with torch.no_grad():
        return [quantizer._true_bits(qp).cpu() for qp in quantizer._qparams]


def moved_groups(start: list | None, now: list | None) -> dict:
    """How far the learned widths went: groups whose integer width differs from its start
    (count and fraction) and the mean absolute change in bits over all groups; {} without
    learned widths."""
    if start is None or now is None:
        return {}
    flat_start, flat_now = torch.cat(start), torch.cat(now)
    diff = (flat_now - flat_start).abs()
    groups = int(diff.numel())
    moved = int((diff > 0).sum())
    return {"groups": groups, "groups_moved": moved,
            "moved_fraction": moved / groups if groups else 0.0,
            "moved_mean_bits": float(diff.double().mean()) if groups else 0.0}


def _full(unique, width: int) -> list[torch.Tensor]:
    return [torch.full((qp.n_groups,), width, dtype=torch.int64) for qp in unique]


def fit_budget(quantizer, max_mb: float, fill: bool = False, sizer=None,
               sensitivity: list | None = None) -> dict:
    """Lowers integer widths, cheapest groups first, until ``true_model_size() <= max_mb``;
    with ``fill``, also raises them while the size still fits when it is under ``max_mb``.

    Raising is the mirror of lowering: all real bits shifted *up* by the largest ``t`` for
    which ``round(b + t)`` still fits, so the groups just below their rounding threshold (a
    2.48 that rounded to 2) gain a bit first. Used where the weights still train for the new
    widths afterwards (the frozen-width phase), so the run ends at its budget, not under it.

    Returns:
        ``{"fits", "true_mb", "lowered" (groups lowered), "raised" (groups raised), "tau"
        (bits shifted down; negative when raised)}``; ``fits`` is False only when even the
        floor (every group at ``min_bits``) is over ``max_mb``: every group is then lowered to
        it (a file target whose floor moved up in training; a true-size floor is checked
        before any training). ``sizer``: as in
        ``start_at_size`` (``true_mb`` stays the true size). ``sensitivity`` (per group, aligned
        with the quantized parameters, ``allocate.group_sensitivity``): groups are lowered /
        raised by expected loss per stored bit instead of by their real bits (``tau`` is then
        log4 of the price per bit, ``allocate.fit_widths_fn``).
    """
    unique = _check(quantizer)
    size_mb = sizer or functools.partial(_size_mb, quantizer)
    real = learned_bits(quantizer)
    # Lowest and highest width a group can have: min_bits / max_bits as the quantizer rounds.
    floor = int(_int_bits(torch.tensor(quantizer.min_bits + quantizer.extra_bits)))
    ceiling = int(_int_bits(torch.tensor(quantizer.max_bits + quantizer.extra_bits)))

    now = [_int_bits(b).clamp(floor, ceiling) for b in real]

    def widths(tau: float) -> list[torch.Tensor]:
        return [_int_bits(b - tau).clamp(floor, ceiling) for b in real]

    before = size_mb(unique, now)
    if before <= max_mb and not fill:
        return {"fits": True, "true_mb": before, "lowered": 0, "raised": 0, "tau": 0.0}
    # Under the budget (fill): the most negative shift that still fits; over it: the smallest
    # positive one. +-16 bits moves every group to its floor / ceiling.
    lo, hi = (-16.0, 0.0) if before <= max_mb else (0.0, 16.0)
    top_up = functools.partial(_top_up, ceiling=ceiling)
    if sensitivity is not None:
        widths, lo, hi, top_up = allocate.fit_widths_fn(now, sensitivity, unique, floor,
                                                        ceiling, before <= max_mb)

    def size(tau: float) -> float:
        return size_mb(unique, widths(tau))

    if size(hi) > max_mb:  # even the floor is over: the floor is as close as it gets
        lo = hi
    elif size(lo) <= max_mb:  # even the ceiling fits
        hi = lo
    while hi - lo > 1e-6:  # invariant: size(lo) > max_mb >= size(hi)
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if size(mid) <= max_mb else (mid, hi)
    final = widths(hi)
    if fill and before <= max_mb:  # groups tied at one real width or price move together
        top_up(size_mb, unique, final, max_mb)
    lowered = raised = 0
    with torch.no_grad():
        for qp, old, new in zip(unique, now, final, strict=True):
            changed = new != old
            if bool(changed.any()):
                lowered += int((new < old).sum())
                raised += int((new > old).sum())
                # Centre of the new width: it rounds to it, whatever extra_bits adds.
                target = new.double() - quantizer.extra_bits
                logits = logits_for_bits(quantizer, target).to(qp.bit_param.device)
                qp.bit_param[changed.to(qp.bit_param.device)] = logits[changed]
    true_mb = quantizer.true_model_size()
    return {"fits": size(hi) <= max_mb, "true_mb": true_mb, "lowered": lowered,
            "raised": raised, "tau": hi}


def _top_up(size_mb, unique, widths: list, max_mb: float, ceiling: int) -> None:
    """Spends what a shift of all widths leaves of the budget: groups tied at one real width
    move together under a shift, so the last raise may not fit whole. Raises, tensor by tensor
    (smallest first), as many of its narrowest groups by one bit as still fit (in place)."""
    for i in sorted(range(len(unique)), key=lambda i: unique[i].numel):
        base = widths[i]
        narrow = torch.nonzero((base == base.min()) & (base < ceiling)).flatten()
        if allocate.raise_prefix(size_mb, unique, widths, i, narrow, max_mb) < narrow.numel():
            return  # the budget is spent
