"""The quantization grids, one object each, shared by every method: ``minmax`` and ``learned``.

A grid quantizes (``encode``: integer levels and what decodes them), dequantizes (``decode``
in ``state.py``, by the entry's scheme), draws DiffQ's training weight (``noisy``), gives the
straight-through weight of true quantization (``fake``), counts its side information
(``side_bits``) and prices a group's range (``group_range``, for ``allocate.py``). ``get(name)``
is the one place a grid's name is looked up.

- ``minmax`` (the reference's, ``ops.minmax_levels``): each tensor's [min, max], ``2**b - 1``
  steps, no side information besides the header.
- ``learned``: a zero-centred clipped range ``alpha`` per row (dim 0, the output channel; a 1-D
  tensor is one row), float16, shared by every width of the row: a group of ``b`` bits uses
  ``step = alpha / 2**(b-1)`` and ``2**b`` levels placed symmetrically between the multiples of
  the step (mid-rise), ``q = clamp(round(w / step - 1/2), -2**(b-1), 2**(b-1) - 1)``, ``value =
  (q + 1/2) * step``: the range is ``[-alpha + step/2, alpha - step/2]``. Levels are stored
  offset to non-negative, ``q + 2**(b-1)``, so they pack on ``b`` bits like the other schemes;
  the entry's ``offset`` is 1 (half steps added to ``q``). Files written before the mid-rise
  levels have ``offset`` 0: ``value = q * step`` (a zero level), and still decode so. Mid-rise
  has 20 % less squared error on a trained resnet18's weights at 2 bits, 8 % at 3, 3 % at 4.

Files on the per-row min/max grid (scheme ``channel``, no longer trained: the learned grid beat
it for every method, in smaller files) keep decoding through ``channel_dequantize``.

Groups of ``group_size`` values run along the flat weight and may straddle two rows: every
kernel works per element, with the group's width and the row's scale each expanded to it.
Decoding uses the float16-rounded scales, and so does the evaluation (through the same
``decode``), so a restored state gives the live evaluation's weights bit for bit.
"""

import math

import torch

from diffq_cli.quant.gridnoise import learned_noisy_and_again
from diffq_cli.quant.ops import (
    minmax_levels,
    noisy_weight_and_again,
    per_group,
    per_row,
    rows_of,
    straight_through,
)

# Clip ratios (of the row's max |w|) searched for an MSE-optimal ``alpha``; above 1 because the
# top level is ``alpha - step / 2``.
CLIP_RATIOS = [0.05 * k for k in range(2, 26)]
RISE = 1  # ``offset`` of the learned levels written now: half steps added to q (mid-rise)
_HALF_TINY = 2.0**-14  # smallest normal float16: scales stay representable and non-zero


def to_half(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to float16 (as stored), as float32; magnitudes kept >= float16's tiny."""
    sign = torch.where(x < 0, -1.0, 1.0)
    return (x.abs().clamp(_HALF_TINY, 65504.0) * sign).half().float()


def _narrow(levels: torch.Tensor, top: float) -> torch.Tensor:
    return levels.to(torch.uint8 if top < 255.5 else torch.int16)


# ------------------------------------------------------------------ channel: files only
def channel_dequantize(levels, scales, bits, shape, group_size: int, qmax=None):
    """Float32 flat values of a ``channel`` entry: per row [low, high] (float16 ``scales``),
    ``qmax`` (or ``2**b - 1``) steps between them."""
    low_e, delta, _ = _channel_steps(scales, bits, shape, group_size, qmax)
    return levels.float() * delta + low_e


def _channel_steps(scales, bits, shape, group_size: int, qmax):
    """Per value: the row's low end, the step and the largest level of the ``channel`` grid
    (from the float16 ``scales`` as stored, so that encoder and decoder agree exactly)."""
    numel = math.prod(shape)
    if qmax is None:
        qmax = torch.pow(2.0, bits.float()) - 1
    qmax_e = per_group(torch.as_tensor(qmax, dtype=torch.float32).expand(bits.shape),
                       numel, group_size)
    low_e, high_e = (per_row(s, shape) for s in scales.float().unbind(1))
    return low_e, (high_e - low_e).clamp_min(_HALF_TINY) / qmax_e, qmax_e


# ------------------------------------------------------------------ learned: alpha per row
def _half_range(bits_e: torch.Tensor) -> torch.Tensor:
    return torch.exp2(bits_e.float() - 1)


def learned_levels(flat, shape, bits, group_size: int, alpha):
    """Stored levels ``q + 2**(b-1)`` (narrow integers) of a flat weight on the mid-rise grid
    of ``alpha`` (one per row, float32 values already rounded as stored)."""
    flat = flat.detach().float()
    half = _half_range(per_group(bits, flat.numel(), group_size))
    step = per_row(alpha.float(), shape) / half
    q = torch.maximum(torch.minimum((flat / step).sub_(0.5).round_(), half - 1), -half)
    return _narrow(q.add_(half), float(2 * half.max()) - 1 if half.numel() else 0.0)


def learned_dequantize(levels, alpha, bits, shape, group_size: int, offset: int = RISE):
    """Float32 flat values ``(level - 2**(b-1) + offset / 2) * alpha / 2**(b-1)``; ``offset``
    0 for files written before the mid-rise levels."""
    half = _half_range(per_group(bits, levels.numel(), group_size))
    q = levels.float() - half
    if offset:
        q += 0.5 * offset
    return q * (per_row(alpha.float(), shape) / half)


def learned_fake(weight, alpha_e, half_e):
    """Fake-quantized ``weight`` on a learned (mid-rise) grid, LSQ-style: rounding
    straight-through, gradients to ``alpha_e`` (per element) through the clamp and the step;
    ``half_e`` is ``2**(b-1)`` per element."""
    step = alpha_e / half_e
    x = torch.maximum(torch.minimum(weight.reshape(-1).float() / step - 0.5, half_e - 1), -half_e)
    q = x + (torch.round(x) - x).detach()
    return ((q + 0.5) * step).view(weight.shape).to(weight.dtype)


def mse_alpha(flat, shape, bits: float, ratios=None) -> torch.Tensor:
    """Per-row ``alpha`` minimising the squared error of the ``learned`` grid at ``bits``,
    searched over clip ratios of the row's largest magnitude (float32, not yet rounded)."""
    flat = flat.detach().float()
    rows = flat.view(rows_of(shape)[0], -1)
    top = rows.abs().amax(1).clamp_min(_HALF_TINY)
    half = 2.0 ** (float(bits) - 1)
    best_err = torch.full_like(top, float("inf"))
    best = top.clone()
    for ratio in ratios or CLIP_RATIOS:
        alpha = top * ratio
        step = (alpha / half)[:, None]
        q = (rows / step).sub_(0.5).round_().clamp_(-half, half - 1).add_(0.5).mul_(step)
        err = (q.sub_(rows)).pow_(2).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, alpha, best)
    return best


class MinMax:
    """Each tensor's [min, max] (the reference's grid)."""

    name = "minmax"
    per_row = False  # one range per tensor

    def side_bits(self, shape) -> int:
        return 0

    def init_scale(self, qp, bits: float):
        """The learned scale parameter's start (None: this grid learns no scale)."""
        return None

    def encode(self, qp, bits, qmax=None) -> dict:
        levels, low, high, _ = minmax_levels(qp.param.reshape(-1), bits, qp.group_size, qmax)
        enc = {"scheme": "minmax", "levels": levels, "bits": bits, "low": low, "high": high}
        if qmax is not None:
            enc["qmax"] = qmax
        return enc

    def noisy(self, qp, bits, unit, noise, mult: float):
        """(DiffQ's noisy training weight, its recompute function or None)."""
        return noisy_weight_and_again(qp.param, unit, noise, qp.group_size, mult)

    def fake(self, qp, bits, qmax=None) -> torch.Tensor:
        """The truly quantized weight with a straight-through gradient to the weight."""
        return straight_through(qp.param, bits, qp.group_size, qmax)

    def group_range(self, qp) -> torch.Tensor:
        """Range of each group's grid (float64, CPU)."""
        w = qp.param.detach().float()
        return torch.full((qp.n_groups,), float(w.max() - w.min()), dtype=torch.float64)


class Learned:
    """A clipped zero-centred range ``alpha`` per row, learned (see the module docstring); a
    quantizer without a learned scale (uniform) takes the per-row MSE-optimal one."""

    name = "learned"
    per_row = True  # one scale per output row; whole widths only (1 bit: +-alpha/2)

    def side_bits(self, shape) -> int:
        return 16 * rows_of(shape)[0]

    def init_scale(self, qp, bits: float):
        """log(alpha) per row: the MSE-optimal clip for ``bits``."""
        return mse_alpha(qp.param.reshape(-1), qp.param.shape, round(bits)).log()

    def encode(self, qp, bits, alpha=None) -> dict:
        """``alpha``: the log of the scales (a parameter), or None for the per-row MSE-optimal
        clip at the first group's width (uniform quantization)."""
        flat, shape = qp.param.detach().reshape(-1), tuple(qp.param.shape)
        if alpha is None:
            scales = to_half(mse_alpha(flat, shape, float(bits[0])))
        else:
            scales = to_half(alpha.detach().float().exp())
        return {"scheme": "learned", "bits": bits, "shape": shape, "scales": scales.half(),
                "levels": learned_levels(flat, shape, bits, qp.group_size, scales),
                "offset": RISE}

    def noisy(self, qp, bits, unit, noise, mult: float):
        return learned_noisy_and_again(qp.param, qp.scale_param.exp(), bits, noise,
                                       qp.group_size, mult)

    def fake(self, qp, bits, qmax=None) -> torch.Tensor:
        """LSQ-style: rounding straight through, gradients to the learned scale too (uniform
        QAT, which learns no scale, goes straight through its evaluation's levels instead)."""
        half = torch.exp2(per_group(bits, qp.numel, qp.group_size) - 1.0)
        alpha = per_row(qp.scale_param.exp(), qp.param.shape)
        return learned_fake(qp.param, alpha, half)

    def group_range(self, qp) -> torch.Tensor:
        rows, per_row_ = rows_of(qp.param.shape)
        row_range = 2.0 * qp.scale_param.detach().exp().float().reshape(rows)
        # A group belongs to the row of its first weight (rows hold whole groups on every layer
        # whose row length is a multiple of the group size; otherwise this is the nearest row).
        first = torch.arange(qp.n_groups) * qp.group_size
        return row_range.double().cpu()[first // per_row_]


GRIDS = {"minmax": MinMax(), "learned": Learned()}


def get(name: str):
    """The grid called ``name``, or ValueError naming the choices."""
    if name not in GRIDS:
        hint = " (the per-channel min/max grid was removed: use 'learned')" \
            if name == "channel" else ""
        raise ValueError(f"grid must be one of {', '.join(GRIDS)}, got {name!r}{hint}")
    return GRIDS[name]
