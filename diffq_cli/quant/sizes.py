"""The size model: how many bits a quantized tensor takes, with one header rule.

A quantized tensor stores its levels (``bits`` per weight of each group), a header
(``HEADER_BITS``: min and max as two float32 plus one byte), its grid's side information
(``side``: per-row scales, ``grids``) and each group's width as an offset from the tensor's
narrowest width, on as many bits as the spread of widths needs. ``header_bits`` is that rule,
the only one: the true size (``tensor_bits``, ``true_model_size()``, ``diffq size``), the
differentiable size (``DiffQuantizer.model_size()``: real-valued payload, headers on the
rounded widths, so they carry no gradient) and the fixed-width methods all count with it. The
coded file's size (``coded.py``) counts the container's own records instead.
"""

import torch

HEADER_BITS = 72


def header_bits(spread, groups, side=0):
    """Bits of a quantized tensor besides its levels: ``HEADER_BITS`` + ``side`` + each of its
    ``groups`` widths on ``spread.bit_length()`` bits (``spread``: widest minus narrowest
    width). Given tensors (one spread and group count per tensor), the sum over them."""
    if torch.is_tensor(spread):  # bit_length in integer steps (spreads are below 16)
        width = sum((spread >= 2**k).float() for k in range(4))
        return HEADER_BITS * spread.numel() + side + torch.dot(width, groups.float())
    return HEADER_BITS + side + int(spread).bit_length() * groups




def tensor_bits(bits: torch.Tensor, numel: int, group_size: int, side: int = 0
                ) -> tuple[int, int]:
    """(payload, total) bits of one quantized tensor with integer widths ``bits`` per group."""
    lengths = group_lengths(numel, group_size, bits.device)
    payload = int((bits.to(torch.int64) * lengths).sum())
    spread = int(bits.max() - bits.min()) if bits.numel() else 0
    return payload, payload + header_bits(spread, bits.numel(), side)


def fixed_bits(bits: float, numel: int, side: int = 0) -> float:
    """Bits of a tensor quantized at one width ``bits`` (fractional bits counted as they are)."""
    return bits * numel + header_bits(0, 1, side)


def group_lengths(numel: int, group_size: int, device=None) -> torch.Tensor:
    """Number of values in each group (the last one may be shorter)."""
    groups = -(-numel // group_size)
    lengths = torch.full((groups,), group_size, dtype=torch.int64, device=device)
    if groups:
        lengths[-1] = numel - (groups - 1) * group_size
    return lengths
