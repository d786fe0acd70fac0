"""NumPy twins of ``quant.pack`` for the artifact reader and writer: the same layout, byte for
byte, written straight into a caller's buffer.

The artifact coder handles millions of levels per file; these run single-threaded, in place, in
a handful of whole-array ops per plane, so reading a file does not depend on torch's intra-op
threads (which stall badly when the cores are shared) and never concatenates chunks.
"""

import numpy as np

from diffq_cli.quant.pack import planes


def pack_into(out: np.ndarray, values: np.ndarray, width: int) -> None:
    """Writes ``pack(values, width)`` into the uint8 array ``out`` (exactly its size)."""
    pos = 0
    for shift, bits in planes(width):
        plane = values >> shift if shift else values
        if bits < 8 or plane.dtype != np.uint8:
            plane = (plane & ((1 << bits) - 1)).astype(np.uint8, copy=False)
        size = (values.size * bits + 7) // 8
        _pack_plane(out[pos : pos + size], plane, bits)
        pos += size


def _pack_plane(out: np.ndarray, plane: np.ndarray, bits: int) -> None:
    """Packs uint8 values below ``2**bits`` (1, 2, 4 or 8): value i at bit ``i * bits``."""
    if bits == 8:
        out[:] = plane
        return
    if bits == 1:
        out[:] = np.packbits(plane, bitorder="little")
        return
    per = 8 // bits
    whole = plane.size - plane.size % per
    if whole:
        # Little-endian words of `per` bytes, one value each: fold the bytes' low bits down.
        if bits == 4:
            w = np.ascontiguousarray(plane[:whole]).view("<u2")
            out[: whole // per] = w | (w >> 4)  # low byte: v0 | v1 << 4 (setitem truncates)
        else:
            w = np.ascontiguousarray(plane[:whole]).view("<u4")
            w = (w | (w >> 6)) & 0x000F000F  # v0 | v1 << 2 in byte 0, v2 | v3 << 2 in byte 2
            out[: whole // per] = w | (w >> 12)
    if whole < plane.size:
        last = 0
        for i, v in enumerate(plane[whole:].tolist()):
            last |= v << (i * bits)
        out[whole // per] = last


def unpack(data: np.ndarray, width: int, n: int) -> np.ndarray:
    """``n`` values of ``width`` bits written by ``pack`` (uint8 up to 8 bits, else uint16)."""
    out = None
    pos = 0
    for shift, bits in planes(width):
        size = (n * bits + 7) // 8
        plane = _unpack_plane(data[pos : pos + size], bits, n)
        pos += size
        if width > 8:
            plane = plane.astype(np.uint16)
        if out is None:
            out = plane.copy() if shift == 0 else plane << shift
        else:
            out |= plane << shift
    return out


def _unpack_plane(data: np.ndarray, bits: int, n: int) -> np.ndarray:
    if bits == 8:
        return data[:n]
    if bits == 1:
        return np.unpackbits(data, count=n, bitorder="little")
    per = 8 // bits
    out = np.empty((data.size, per), dtype=np.uint8)
    mask = (1 << bits) - 1
    for i in range(per):
        np.bitwise_and(data >> (i * bits), mask, out=out[:, i])
    return out.reshape(-1)[:n]
