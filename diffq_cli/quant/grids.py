"""Per-channel quantization grids shared by every method: ``channel`` and ``learned``.

``minmax`` (the reference grid, ``ops.minmax_levels``) spans each tensor's [min, max]. Here a
channel is a row of the weight (dim 0, the output channel; a 1-D tensor is one row):

- ``channel``: each row's own [min, max] (stored as two float16 per row), ``2**b - 1`` steps.
- ``learned``: a zero-centred clipped range ``alpha`` per row (float16), shared by every width of
  the row: a group of ``b`` bits uses ``step = alpha / 2**(b-1)`` and ``2**b`` levels placed
  symmetrically between the multiples of the step (mid-rise), ``q = clamp(round(w / step -
  1/2), -2**(b-1), 2**(b-1) - 1)``, ``value = (q + 1/2) * step``: the range is ``[-alpha +
  step/2, alpha - step/2]``. Every value up to 7 bits is thus an odd multiple of ``alpha /
  2**b``. Levels are stored offset to non-negative, ``q + 2**(b-1)``, so they pack on ``b`` bits
  like the other schemes; the entry's ``offset`` is 1 (half steps added to ``q``).
  Files written before the mid-rise levels have ``offset`` 0: ``value = q * step`` (one more
  level below zero than above, a zero level), and still decode so. Mid-rise has 20 % less
  squared error on a trained resnet18's weights at 2 bits, 8 % at 3, 3 % at 4 (``python
  bench/grid_bench.py mse --weights ...``): the zero-level grid spends its fourth 2-bit level
  on one side only.

Groups of ``group_size`` values run along the flat weight and may straddle two rows: every
kernel works per element, with the group's width and the row's scale each expanded to it.
Decoding uses the float16-rounded scales, and so does the evaluation (through the same
``decode``), so a restored state gives the live evaluation's weights bit for bit.
"""

import math

import torch

GRIDS = ("minmax", "channel", "learned")
# Clip ratios (of the row's max |w|) searched for an MSE-optimal ``alpha``; above 1 because the
# top level is ``alpha - step / 2``.
CLIP_RATIOS = [0.05 * k for k in range(2, 26)]
RISE = 1  # ``offset`` of the learned levels written now: half steps added to q (mid-rise)
_HALF_TINY = 2.0**-14  # smallest normal float16: scales stay representable and non-zero


def check_grid(grid: str) -> str:
    """``grid`` if it is a known grid, else ValueError naming the choices."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {', '.join(GRIDS)}, got {grid!r}")
    return grid


def rows_of(shape) -> tuple[int, int]:
    """(rows, values per row) of a weight: dim 0 is the channel; a 1-D tensor is one row."""
    numel = math.prod(shape)
    rows = shape[0] if len(shape) >= 2 and shape[0] > 0 else 1
    return rows, numel // rows


def side_bits(grid: str, shape) -> int:
    """Bits of per-channel side information a tensor of ``shape`` stores on ``grid``."""
    rows = rows_of(shape)[0]
    return {"minmax": 0, "channel": 32 * rows, "learned": 16 * rows}[grid]


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


def to_half(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to float16 (as stored), as float32; magnitudes kept >= float16's tiny."""
    sign = torch.where(x < 0, -1.0, 1.0)
    return (x.abs().clamp(_HALF_TINY, 65504.0) * sign).half().float()


def _narrow(levels: torch.Tensor, top: float) -> torch.Tensor:
    return levels.to(torch.uint8 if top < 255.5 else torch.int16)


# ------------------------------------------------------------------ channel: per-row min/max
def channel_levels(flat, shape, bits, group_size: int, qmax=None):
    """(levels (narrow integers), scales (rows, 2) float16 of [low, high]) of a flat weight."""
    flat = flat.detach().float()
    rows = rows_of(shape)[0]
    low, high = torch.aminmax(flat.view(rows, -1), dim=1)
    scales = torch.stack([low, high], 1).half()
    low_e, delta, qmax_e = _channel_steps(scales, bits, shape, group_size, qmax)
    levels = torch.minimum(((flat - low_e) / delta).round_().clamp_min_(0), qmax_e)
    return _narrow(levels, float(qmax_e.max()) if qmax_e.numel() else 0.0), scales


def channel_dequantize(levels, scales, bits, shape, group_size: int, qmax=None):
    """Float32 flat values of ``channel_levels``' output."""
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


def channel_noisy(weight, unit_e, noise, mult: float):
    """DiffQ's training weight on per-row min/max ranges: ``w + noise * unit * span_row``."""
    w = weight.reshape(-1).float()
    rows = w.view(rows_of(weight.shape)[0], -1)
    span = per_row(rows.amax(1) - rows.amin(1), weight.shape)
    return (w + noise * unit_e * span * mult).view(weight.shape).to(weight.dtype)


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


def encode(grid: str, qp, bits, alpha=None, qmax=None) -> dict:
    """A quantizer's ``_encode`` on a per-channel grid: levels, widths and float16 scales.

    Args:
        qp: the QParam; bits: integer width per group.
        alpha: ``learned`` only: log of the scales (a parameter), or None for the per-row
            MSE-optimal clip at the first group's width (uniform quantization).
        qmax: ``channel`` only: the largest level (fractional uniform bits), else ``2**b - 1``.
    """
    flat, shape = qp.param.detach().reshape(-1), tuple(qp.param.shape)
    enc = {"scheme": grid, "bits": bits, "shape": shape}
    if grid == "channel":
        enc["levels"], enc["scales"] = channel_levels(flat, shape, bits, qp.group_size, qmax)
        if qmax is not None:
            enc["qmax"] = qmax
        return enc
    if alpha is None:
        scales = to_half(mse_alpha(flat, shape, float(bits[0])))
    else:
        scales = to_half(alpha.detach().float().exp())
    enc["levels"] = learned_levels(flat, shape, bits, qp.group_size, scales)
    enc["scales"] = scales.half()
    enc["offset"] = RISE
    return enc
