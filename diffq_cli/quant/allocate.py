"""Bit widths by expected loss per bit: the start of a size target and the fit at the freeze.

For noise of variance v on the weights of a group, the loss rises by about ``0.5 * v *
sum(E[g_i^2])`` (diagonal Fisher, measured from gradients). On a grid of range R at b bits the
rounding noise variance is proportional to ``R^2 4^-b``, so a group's *sensitivity* ``s =
sum(E[g_i^2]) * R^2`` prices its width: one bit less costs ``3 s 4^-b`` (b -> b - 1), one bit
more saves ``0.75 s 4^-b``, each for the group's ``n`` stored bits. That is the noise-variance
model of HAWQ-style mixed precision, with the Fisher in place of the Hessian's trace.

``start_widths`` gives whole tensors their widths greedily (loss removed per stored bit);
``fit_widths_fn`` is what ``budget.fit_budget`` bisects when it has group sensitivities: with a
price ``lambda`` per stored bit, a group is lowered while a bit costs it less than ``lambda``
(over budget), or raised while a bit saves it more (filling), never past its current width in
the other direction. ``lambda`` is the one scalar the bisection moves, so the groups that pay
least lose their bits first, whatever their learned real bits' fractional part.
"""

import math

import torch

from diffq_cli.quant import ops

_LOG4 = math.log(4.0)


def group_sums(quantizer, per_weight: dict) -> list[torch.Tensor | None]:
    """Per-group sums (float64, CPU) of a per-weight tensor ``{parameter name: tensor shaped
    like it}`` for each quantized parameter of ``quantizer``; None where a name is missing."""
    out = []
    for qp in quantizer._qparams:
        values = per_weight.get(qp.name)
        out.append(None if values is None
                   else ops.group_sums(values.detach().reshape(-1).double().cpu(),
                                      qp.group_size))
    return out


def group_sensitivity(quantizer, grad_sums: list) -> list[torch.Tensor] | None:
    """``s`` per group (list aligned with the quantized parameters): the summed squared
    gradients ``grad_sums`` (``group_sums`` of them) times the squared range of the group's
    grid *now* (``grids``: the tensor's range on ``minmax``, ``2 alpha`` on ``learned``).
    None when any tensor lacks its sums."""
    if any(g is None for g in grad_sums):
        return None
    out = []
    with torch.no_grad():
        for qp, sums in zip(quantizer._qparams, grad_sums, strict=True):
            out.append(sums * quantizer._grid.group_range(qp) ** 2)
    return out


def fit_widths_fn(current: list, sensitivity: list, unique, floor: int, ceiling: int,
                  fill: bool):
    """``(widths(tau), lo, hi, top_up)`` for ``budget.fit_budget``'s bisection: ``tau`` is
    ``log4(lambda)``, the price per stored bit; ``widths(tau)`` never increases with it, is
    ``current`` at ``lo`` and every group at its floor (lowering) / ``current`` (filling) at
    ``hi``; filling, ``lo`` puts every group at ``ceiling``. ``top_up(size_mb, unique,
    widths, max_mb)`` then raises, one bit each and dearest first, the groups a shared price
    left out (groups tied at one price move together under the bisection)."""
    # a = log4(3 s / n): a group at width w is lowered while w > a - tau (its bit costs less
    # than lambda), raised while w + 1 <= a - tau (the next bit saves more than lambda / 4:
    # the same 3 s 4^-w / n rule seen from w + 1).
    scores = []
    top = max((float(s.max()) for s in sensitivity if s.numel()), default=0.0)
    tiny = max(top, 1e-30) * 1e-12  # a group no gradient reached is cheapest, not -inf
    for qp, s in zip(unique, sensitivity, strict=True):
        n = torch.full((qp.n_groups,), float(qp.group_size), dtype=torch.float64)
        if qp.numel % qp.group_size:
            n[-1] = qp.numel % qp.group_size
        scores.append(torch.log(3.0 * s.clamp_min(tiny) / n) / _LOG4)

    def widths(tau: float) -> list[torch.Tensor]:
        out = []
        for a, cur in zip(scores, current, strict=True):
            w = torch.floor(a - tau).clamp(floor, ceiling).to(torch.int64)
            out.append(torch.maximum(cur, w) if fill else torch.minimum(cur, w))
        return out

    def top_up(size_mb, _unique, done: list, max_mb: float) -> None:
        _top_up_by_price(scores, unique, done, size_mb, max_mb, ceiling)

    spread = [(a - c.double()) for a, c in zip(scores, current, strict=True) if a.numel()]
    if not spread:
        return widths, 0.0, 0.0, top_up
    lowest = min(float(d.min()) for d in spread)
    highest = max(float(d.max()) for d in spread)
    if fill:  # from everything at the ceiling to nothing raised
        low = min(float(a.min()) for a in scores if a.numel()) - ceiling - 1
        return widths, low, highest + 1, top_up
    return widths, lowest - 1, max(float(a.max()) for a in scores if a.numel()) - floor + 1, top_up


def _top_up_by_price(scores, unique, widths: list, size_mb, max_mb: float, ceiling: int):
    """Raises by one bit, tensor by tensor (the tensor with the most deserving group first),
    as many of each tensor's groups below ``ceiling`` as still fit, the most deserving first
    (their next bit's price ``a - (w + 1)``), in place. Tensor by tensor because a tensor's
    first raised group also costs its width header on every group: a tensor whose first raise
    does not fit is passed over and the next one tried."""
    keys = [a - (w.double() + 1) for a, w in zip(scores, widths, strict=True)]

    def best(i: int) -> float:
        room = widths[i] < ceiling
        return float(keys[i][room].max()) if bool(room.any()) else -math.inf

    for i in sorted(range(len(unique)), key=best, reverse=True):
        room = torch.nonzero(widths[i] < ceiling).flatten()
        if not room.numel():
            continue
        order = room[torch.argsort(keys[i][room], descending=True, stable=True)]
        raise_prefix(size_mb, unique, widths, i, order, max_mb)


def raise_prefix(size_mb, unique, widths: list, i: int, order, max_mb: float) -> int:
    """Raises by one bit the longest prefix of ``order`` (group indices of tensor ``i``) with
    which the size still fits (bisection: the size grows with the prefix), in place; returns
    the prefix's length."""
    base = widths[i].clone()
    lo, hi = 0, order.numel() + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        widths[i] = base.clone()
        widths[i][order[:mid]] += 1
        lo, hi = (mid, hi) if size_mb(unique, widths) <= max_mb else (lo, mid)
    widths[i] = base.clone()
    widths[i][order[:lo]] += 1
    return lo


def start_widths(unique, sensitivity: dict, size_mb, target_mb: float, low: int,
                 high: int):
    """Whole-tensor widths by expected loss per bit, greedily: every tensor at ``low``, then
    the tensor whose next bit removes the most loss per stored bit gets it, while the size
    fits. One more bit divides a tensor's noise variance by 4, so its gain is
    ``sensitivity * 4**-b * 3/4`` for ``numel`` bits. Returns the widths and, first, the tensor
    that would have been raised next (the start then widens as many of its groups as still
    fit)."""
    widths = [torch.full((qp.n_groups,), low, dtype=torch.int64) for qp in unique]
    now = [low] * len(unique)

    def gain(i: int) -> float:
        return sensitivity.get(unique[i].name, 0.0) * 4.0 ** -now[i] / unique[i].numel

    while True:
        open_ = [i for i in range(len(unique)) if now[i] < high]
        if not open_:
            return widths, []
        best = max(open_, key=gain)
        widths[best] = widths[best] + 1
        if size_mb(unique, widths) > target_mb:
            widths[best] = widths[best] - 1
            return widths, [best]
        now[best] += 1
