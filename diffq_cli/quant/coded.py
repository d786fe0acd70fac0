"""The size of the entropy-coded file, estimated from the weights (``--size file``).

The artifact codes, per quantized tensor, one order-0 stream of the group widths and one per
width of the levels of every group of that width (``files/coding.py``); a stream costs its
empirical entropy (ANS ends within a few bytes of it) plus a table of 6 bytes per symbol
present, or its packed size when that is smaller. This module counts exactly that, from the
levels, without running the coder (``file_bits``), and builds what aiming at the file needs:

- ``CodedTables``: per tensor, the coded bits per weight at each whole width ``E_t(b)``,
  measured by quantizing the tensor at ``b``, up to one bit over its widest group and at most
  ``TABLE_TOP`` (wider widths add one bit per bit: the high-resolution regime). The
  differentiable file size interpolates ``E_t`` linearly in each group's real-valued bits, so
  ``mu * size`` charges a bit what it costs *in the file*: a tensor whose levels are peaked
  (cheap to code) is cheap to widen. The tables hold no gradient towards the weights; they are
  measured again every calibration. (The coder can end a little *under* the order-0 count of a
  stream whose symbols come in long runs, e.g. widths set tensor prefix by tensor prefix: up to
  1.6 % of the file in the benchmarks.)
- ``widths_mb``: the same sum at integer widths (start and fit of a file target).

Everything outside the coded streams is a constant here: kept floats and buffers as zlib
leaves them (measured), per-channel scales, and the container's records (``*_BYTES``, least
squares on resnet18/34/50, mobilenet_v2 and the tests' model with the default recipe's
metadata, residuals under 320 bytes; a run aiming at the file measures the real one when it
fits the widths, ``run/targets.py``).
"""

import math
import zlib

import torch

from diffq_cli.quant.sizes import group_lengths
from diffq_cli.units import MIB_BITS

TABLE_BITS = 48  # one table row: int16 symbol + int32 count
TABLE_TOP = 8  # widths measured; above, each bit adds one coded bit per weight
OVERHEAD_BYTES = 3900  # container, config and a finetune artifact's metadata (gzipped pickle)
ENTRY_BYTES = 128  # per quantized tensor: its entry's fields and stream records
RAW_TENSOR_BYTES = 11  # per kept float tensor or buffer: its pickle record


def stream_bits(values: torch.Tensor, width: int) -> float:
    """Bits one order-0 stream of ``values`` (integers >= 0 below ``2**width``) takes in the
    file: the cheaper of entropy + table and the packed fallback (as the coder chooses)."""
    n = values.numel()
    if n == 0:
        return 0.0
    counts = torch.bincount(values.reshape(-1).to(torch.int64))
    counts = counts[counts > 0].double()
    if counts.numel() == 1:
        return float(TABLE_BITS)
    entropy = float(n * math.log2(n) - (counts * counts.log2()).sum())
    coded = 32 * math.ceil(entropy / 32) + TABLE_BITS * counts.numel()
    return min(coded, 8.0 * math.ceil(n * width / 8))


def tensor_file_bits(levels: torch.Tensor, bits: torch.Tensor, numel: int,
                     group_size: int) -> float:
    """Coded bits of one tensor's streams: its widths (if they differ) and its levels per
    width. ``levels``: one per weight, in group order; ``bits``: the width of each group."""
    bits = bits.to(torch.int64).cpu()
    levels = levels.reshape(-1).cpu()
    lo, hi = int(bits.min()), int(bits.max())
    total = 0.0
    if hi > lo:
        total += stream_bits(bits - lo, (hi - lo).bit_length())
        per_weight = bits.repeat_interleave(group_lengths(numel, group_size))
        for width in torch.unique(bits).tolist():
            total += stream_bits(levels[per_weight == width], width)
    else:
        total += stream_bits(levels, lo)
    return total


def side_bytes(quantizer) -> int:
    """Bytes of the file besides the coded streams: kept floats and buffers as the artifact's
    gzip leaves them (zlib, measured), per-channel scales (float16), the fixed overheads."""
    raw = [p.detach().half() if quantizer.float16 else p.detach() for _, p in quantizer._others]
    raw += list(quantizer.model.buffers())
    floats = len(zlib.compress(b"".join(t.cpu().contiguous().numpy().tobytes() for t in raw)))
    scales = sum(quantizer._side_bits(qp) for qp in quantizer._qparams) // 8
    return (floats + scales + OVERHEAD_BYTES + ENTRY_BYTES * len(quantizer._qparams)
            + RAW_TENSOR_BYTES * len(raw))


def file_bits(quantizer) -> float:
    """Estimated bits of the artifact a quantizer's state would be written to, now (rounded
    widths, true quantization): the ``diffq size`` file size, without coding anything."""
    total = 8.0 * side_bytes(quantizer)
    with torch.no_grad():
        for qp in quantizer._qparams:
            enc = quantizer._encode(qp)
            total += tensor_file_bits(enc["levels"], enc["bits"], qp.numel, qp.group_size)
    return total


class CodedTables:
    """``E_t(b)``: coded bits per weight of each quantized tensor at each whole width ``b``
    (index 0..15; see the module docstring), measured by ``refresh()``."""

    def __init__(self, quantizer):
        self.quantizer = quantizer
        self.table = None  # (tensors, 16) float32
        self.side_bits = 0.0
        self._index = self._device_table = None  # each group's tensor; the table on device

    def refresh(self) -> "CodedTables":
        q = self.quantizer
        lo = max(1, int(math.floor(q.min_bits + q.extra_bits)))
        top = max(lo, min(TABLE_TOP, int(math.ceil(q.max_bits + q.extra_bits))))
        rows = []
        with torch.no_grad():
            for qp in q._qparams:
                row = torch.zeros(16, dtype=torch.float64)
                # Up to one bit over the tensor's widest group (what interpolation can reach
                # before the next refresh): a third of the work once the start is set.
                last = min(top, max(lo, int(q._true_bits(qp).max()) + 1))
                for b in range(lo, last + 1):
                    enc = q._encode(qp, torch.full((qp.n_groups,), b, dtype=torch.int64))
                    row[b] = stream_bits(enc["levels"], b) / qp.numel
                row[:lo] = row[lo]  # below min_bits: never used, kept flat
                row[last + 1:] = row[last] + torch.arange(1, 16 - last, dtype=torch.float64)
                rows.append(row)
        self.table = torch.stack(rows).float() if rows else torch.zeros(0, 16)
        self.side_bits = 8.0 * side_bytes(q)
        return self

    def size_bits(self, bits: torch.Tensor, groups: torch.Tensor,
                  lengths: torch.Tensor) -> torch.Tensor:
        """Differentiable coded bits of the file: real ``bits`` per group (all tensors
        concatenated, ``extra_bits`` included), groups per tensor, each group's length."""
        if self._index is None or self._index.numel() != bits.numel():
            self._index = torch.repeat_interleave(
                torch.arange(groups.numel(), device=bits.device), groups)
            self._device_table = self.table.to(bits.device)
        table, index = self._device_table, self._index
        b = bits.clamp(1, 15)
        k = b.detach().floor().clamp(1, 14).long()
        low, high = table[index, k], table[index, k + 1]
        return torch.dot(low + (high - low) * (b - k), lengths) + self.side_bits

    def widths_mb(self, unique, widths: list) -> float:
        """File size in MiB at integer ``widths`` (one tensor per quantized parameter): levels
        from the tables, width streams exactly, side bytes."""
        total = self.side_bits
        for i, (qp, w) in enumerate(zip(unique, widths, strict=True)):
            w = w.to(torch.int64).cpu()
            lengths = group_lengths(qp.numel, qp.group_size).double()
            total += float((self.table[i].double()[w] * lengths).sum())
            lo, hi = int(w.min()), int(w.max())
            if hi > lo:
                total += stream_bits(w - lo, (hi - lo).bit_length())
        return total / MIB_BITS
