"""Bit packing of non-negative integers of 1 to 15 bits, in PyTorch (no compiled extension).

A width is split into planes of 8, 4, 2 and 1 bits (its binary digits, widest first, starting
at the least significant bits): 13 bits = 8 + 4 + 1. Each plane packs whole values into bytes
(8 / plane values per byte, little-endian within the byte), which is a few vectorised uint8 ops.
Planes follow each other in the stream, so the layout is the same on every host. The packed size
is ``ceil(n * width / 8)`` bytes plus at most one padding byte per plane.
"""

import torch

from diffq_cli.quant.ops import split_groups

MAX_WIDTH = 15


def planes(width: int) -> list[tuple[int, int]]:
    """(shift, bits) of each plane of ``width``, e.g. 13 -> [(0, 8), (8, 4), (12, 1)]."""
    planes, shift = [], 0
    for bits in (8, 4, 2, 1):
        if width & bits:
            planes.append((shift, bits))
            shift += bits
    return planes


def _check_width(width: int) -> None:
    if not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"bit width must be an integer between 1 and {MAX_WIDTH}, got {width!r}")


def packed_nbytes(n: int, width: int) -> int:
    """Bytes that ``pack`` returns for ``n`` values of ``width`` bits."""
    return sum((n * bits + 7) // 8 for _, bits in planes(width))


def _pack_plane(plane: torch.Tensor, bits: int) -> torch.Tensor:
    """Packs uint8 values below ``2**bits`` (bits in 1, 2, 4, 8) into bytes."""
    if bits == 8:
        return plane
    per_byte = 8 // bits
    extra = (-plane.numel()) % per_byte
    if extra:
        plane = torch.cat([plane, plane.new_zeros(extra)])
    cols = plane.view(-1, per_byte)
    out = cols[:, 0].clone()
    for i in range(1, per_byte):
        out |= cols[:, i] << (i * bits)
    return out


def _unpack_plane(data: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    if bits == 8:
        return data
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    out = torch.empty(data.numel(), per_byte, dtype=torch.uint8, device=data.device)
    for i in range(per_byte):
        torch.bitwise_and(data >> (i * bits), mask, out=out[:, i])
    return out.view(-1)[:n]


def pack(values: torch.Tensor, width: int) -> torch.Tensor:
    """Packs non-negative integers below ``2**width`` into a uint8 tensor.

    Args:
        values: integer tensor (any shape and integer dtype). Values are not range-checked, for
            speed: callers clamp them first.
        width: bits per value, 1 to 15.

    Returns:
        1-D uint8 tensor of ``packed_nbytes(values.numel(), width)`` bytes.

    Example:
        >>> unpack(pack(torch.tensor([1, 2, 3]), 2), 2, 3)
        tensor([1, 2, 3], dtype=torch.uint8)
    """
    _check_width(width)
    values = values.reshape(-1)
    if width <= 8 and values.dtype != torch.uint8:
        values = values.to(torch.uint8)
    elif width > 8 and values.dtype not in (torch.int16, torch.int32):
        values = values.to(torch.int32)
    chunks = []
    for shift, bits in planes(width):
        plane = values >> shift if shift else values
        if bits < 8 or plane.dtype != torch.uint8:
            plane = (plane & ((1 << bits) - 1)).to(torch.uint8)
        chunks.append(_pack_plane(plane, bits))
    return chunks[0].clone() if len(chunks) == 1 and chunks[0] is values else torch.cat(chunks)


def unpack(data: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """Unpacks ``n`` values of ``width`` bits written by ``pack``.

    Returns:
        uint8 tensor for widths up to 8, int16 above.
    """
    _check_width(width)
    need = packed_nbytes(n, width)
    data = data.reshape(-1)
    if data.dtype != torch.uint8 or data.numel() < need:
        raise ValueError(f"packed data too short: need {need} bytes for {n} values of {width} bits")
    wide = width > 8
    out = None
    start = 0
    for shift, bits in planes(width):
        size = (n * bits + 7) // 8
        plane = _unpack_plane(data[start : start + size], bits, n)
        start += size
        if wide:
            plane = plane.to(torch.int16)
        if out is None:
            out = plane.clone() if shift == 0 else plane << shift
        else:
            out |= plane << shift
    return out


# ------------------------------------------------- one parameter's levels, groups by width
def as_words(rows: torch.Tensor) -> torch.Tensor:
    """(G, k) view of (G, group_size) narrow-integer rows using the widest dtype that divides a
    row: moving 8-byte words is several times faster than moving bytes when reordering rows."""
    nbytes = rows.shape[1] * rows.element_size()
    for dtype, size in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2)):
        if nbytes % size == 0 and rows.element_size() <= size:
            return rows.view(dtype)
    return rows


def width_order(main_bits: torch.Tensor) -> torch.Tensor:
    # Stable sort by width; sorting uint8 keys is ~3x faster than int64 ones.
    return torch.argsort(main_bits.to(torch.uint8), stable=True)


def pack_levels(levels: torch.Tensor, bits: torch.Tensor, group_size: int) -> list:
    """Packed chunks of one parameter's levels, groups sorted by width."""
    main, tail = split_groups(levels, group_size)
    full = main.shape[0]
    main_bits = bits[:full]
    lo, hi = (int(v) for v in torch.aminmax(main_bits)) if full else (0, 0)
    chunks = []
    if full and lo == hi:
        chunks.append(pack(main, lo))
    elif full:
        rows = as_words(main.contiguous()).index_select(0, width_order(main_bits))
        rows = rows.view(main.dtype)
        counts = torch.bincount(main_bits, minlength=16).tolist()
        start = 0
        for width, count in enumerate(counts):
            if count:
                chunks.append(pack(rows[start : start + count], width))
                start += count
    if tail.numel():
        chunks.append(pack(tail, int(bits[full])))
    return chunks


def unpack_levels(data: torch.Tensor, bits: torch.Tensor, numel: int, gs: int):
    """Levels (uint8 up to 8 bits, else int16) of one parameter, in the original group order."""
    full = numel // gs
    dtype = torch.uint8 if int(bits.max()) <= 8 else torch.int16
    out = torch.empty(numel, dtype=dtype)
    main, tail = split_groups(out, gs)
    main_bits = bits[:full]
    pos = 0
    if full:
        lo, hi = (int(v) for v in torch.aminmax(main_bits))
        if lo == hi:
            n = packed_nbytes(full * gs, lo)
            main.copy_(unpack(data[:n], lo, full * gs).view(full, gs))
            pos = n
        else:
            rows = torch.empty(full, gs, dtype=dtype)
            start = 0
            for width, count in enumerate(torch.bincount(main_bits, minlength=16).tolist()):
                if count:
                    n = packed_nbytes(count * gs, width)
                    values = unpack(data[pos : pos + n], width, count * gs)
                    rows[start : start + count] = values.view(count, gs)
                    start += count
                    pos += n
            as_words(main).index_copy_(0, width_order(main_bits), as_words(rows))
    if tail.numel():
        width = int(bits[full])
        tail.copy_(
            unpack(data[pos : pos + packed_nbytes(tail.numel(), width)], width, tail.numel())
        )
    return out
