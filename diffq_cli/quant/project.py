"""Linear widths kept inside a size budget while they learn: a projected step.

With ``quant.param=linear`` Adam moves each width by about its learning rate per step,
whatever the size of its gradient, so mu only decides the *sign* of a group's step. Where
the budget has no room left (every group at the floor, as at 2 bits' size on the ``minmax``
grid) the groups the loss wants wider rise at that rate and the controller needs tens of
steps to raise mu far enough to stop them: the weights train with the noise of widths the
budget cannot pay for, and the fit at the freeze takes them back (resnet18 / Fashion-MNIST at
2 bits' size: the size ran 10 % over for the whole learning phase, −0.7 point). Projecting
the widths onto ``{size <= aim}`` after every step of the bits' optimizer makes the budget a
hard constraint while they learn; the controller still sets mu below it.

The projection is the Euclidean one: every width moves down by the same ``t >= 0`` (clamped
at ``min_bits``), the smallest ``t`` for which the size fits. The size is affine in the
widths above the floor, so ``t`` is found by Newton's steps on a convex, decreasing,
piecewise linear function: each step lands at or before the root, in a few steps.
"""

import torch

from diffq_cli.units import MIB_BITS

NEWTON_STEPS = 50  # each crosses at least one floor breakpoint; a handful are needed in practice
TOLERANCE_BITS = 64.0  # 8 bytes over is fitted: the float32 sums are good to a few bits


def project_to_budget(quantizer, max_mb: float, offset_mb: float = 0.0) -> float:
    """Lowers the linear widths of ``quantizer`` by the smallest common ``t`` (at least 0,
    none below ``min_bits``) for which ``model_size() - offset_mb <= max_mb``; returns ``t``.

    ``offset_mb``: how far ``model_size()`` is above the true size (the controller's
    calibration). Width headers and kept floats count as they are now. Nothing happens for
    another parametrisation, when frozen, or when the size already fits.

    Example:
        >>> project_to_budget(quantizer, 3.88)   # after the bits' optimizer step
        0.0
    """
    unique = quantizer._qparams
    if quantizer.param != "linear" or not unique or quantizer.frozen:
        return 0.0
    with torch.no_grad():
        over = (float(quantizer.model_size()) - offset_mb - max_mb) * MIB_BITS
        if over <= 0:
            return 0.0
        lo = float(quantizer.min_bits)
        lengths = quantizer._shape_cache[1]  # values per group (model_size filled it)
        flat = torch.cat([qp.bit_param.reshape(-1) for qp in unique]).clamp_(lo, quantizer.max_bits)
        goal = float(torch.dot(flat, lengths)) - over
        # The slope counts every width above the floor at the longest group: at least the true
        # slope, so each step stays at or before the root (a tensor's last group may be shorter).
        longest = float(lengths.max())
        shifted = torch.empty_like(flat)
        t = 0.0
        for _ in range(NEWTON_STEPS):
            torch.sub(flat, t, out=shifted).clamp_(min=lo)
            excess = float(torch.dot(shifted, lengths)) - goal
            above = int(torch.count_nonzero(shifted > lo))
            if excess <= TOLERANCE_BITS or above == 0:  # close enough, or all at the floor
                break
            t += excess / (above * longest)
        for qp in unique:
            qp.bit_param.sub_(t).clamp_(min=lo)
    return t
