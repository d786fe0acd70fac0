"""Linear widths kept inside a size budget while they learn: a projected step.

With ``quant.param=linear`` Adam moves each width by about its learning rate per step,
whatever the size of its gradient, so mu only decides the *sign* of a group's step. Where
the budget has no room left (every group at the floor, as at 2 bits' size on the ``minmax``
grid) the groups the loss wants wider rise at that rate and the controller needs tens of
steps to raise mu far enough to stop them: the weights train with the noise of widths the
budget cannot pay for, and the fit at the freeze takes them back (resnet18 / Fashion-MNIST at
2 bits' size: the size ran 10 % over for the whole learning phase, −0.7 point). The mirror
case hurts too: the size term pushes every group with a weak task gradient down at the same
rate, so the size sank 5 % under its aim within 20 steps (mobilenet_v2 at 4 bits' size) and
the weights trained with more noise than the budget pays for. So after every step of the bits'
optimizer the widths are projected onto ``size == aim`` (``fill=True``): the budget is held
while they learn, and what the widths learn is where its bits go.

The projection is the Euclidean one: every width moves by the same amount (clamped to the
width range), the least that reaches the budget. The size is affine in the widths away from
the bounds, so the shift is found by Newton's steps on a monotone, piecewise linear function
(convex going down, concave going up): each step lands at or before the root, in a few steps.
"""

import torch

from diffq_cli.units import MIB_BITS

NEWTON_STEPS = 50  # each crosses at least one floor breakpoint; a handful are needed in practice
TOLERANCE_BITS = 64.0  # 8 bytes over is fitted: the float32 sums are good to a few bits


def project_to_budget(quantizer, max_mb: float, offset_mb: float = 0.0,
                      fill: bool = False) -> float:
    """Shifts the linear widths of ``quantizer`` by one common amount, clamped to
    [``min_bits``, ``max_bits``]: down by the least that makes ``model_size() - offset_mb <=
    max_mb``, or with ``fill`` also up by the most that keeps it so (the budget is then held
    exactly: the projection onto ``size == max_mb``). Returns the shift in bits (negative:
    lowered; 0 within ``TOLERANCE_BITS``).

    ``offset_mb``: how far ``model_size()`` is above the true size (the controller's
    calibration). Width headers and kept floats count as they are now. Nothing happens for
    another parametrisation or when frozen.

    Example:
        >>> project_to_budget(quantizer, 3.88, fill=True)   # after the bits' optimizer step
        -0.0213
    """
    unique = quantizer._qparams
    if quantizer.param != "linear" or not unique or quantizer.frozen:
        return 0.0
    with torch.no_grad():
        over = (float(quantizer.model_size()) - offset_mb - max_mb) * MIB_BITS
        if abs(over) <= TOLERANCE_BITS or (over < 0 and not fill):  # on the budget already
            return 0.0
        lo, hi = float(quantizer.min_bits), float(quantizer.max_bits)
        lengths = quantizer._shape_cache[1]  # values per group (model_size filled it)
        flat = torch.cat([qp.bit_param.reshape(-1) for qp in unique]).clamp_(lo, hi)
        goal = float(torch.dot(flat, lengths)) - over
        down = over > 0
        # The slope counts every width still free to move at the longest group: at least the
        # true slope, so each step stays at or before the root (a tensor's last group may be
        # shorter). Down, the size is convex in the shift; up, concave: Newton's steps from 0
        # stay on the near side of the root either way.
        longest = float(lengths.max())
        shifted = torch.empty_like(flat)
        t = 0.0
        for _ in range(NEWTON_STEPS):
            if down:
                torch.sub(flat, t, out=shifted).clamp_(min=lo)
            else:
                torch.add(flat, t, out=shifted).clamp_(max=hi)
            gap = float(torch.dot(shifted, lengths)) - goal
            gap = gap if down else -gap
            free = int(torch.count_nonzero(shifted > lo if down else shifted < hi))
            if gap <= TOLERANCE_BITS or free == 0:  # close enough, or all at a bound
                break
            t += gap / (free * longest)
        shift = -t if down else t
        for qp in unique:
            qp.bit_param.add_(shift).clamp_(lo, hi)
    return shift
