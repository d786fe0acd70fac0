"""Sizes and per-layer bit statistics read from a saved quantized state (no model needed)."""

import torch

from diffq_cli.quant.pack import unpack_levels
from diffq_cli.quant.sizes import group_lengths, header_bits, tensor_bits
from diffq_cli.quant.state import entry_group_bits, entry_levels_data, numel_of
from diffq_cli.units import MIB_BITS, compression


def _order0_bits(counts: torch.Tensor) -> float:
    """Bits an ideal order-0 coder needs for symbols with these counts: n log2 n - sum c log2 c."""
    counts = counts[counts > 0].double()
    n = counts.sum()
    return float(n * torch.log2(n) - (counts * torch.log2(counts)).sum()) if counts.numel() else 0.0


def entropy_bits(entry: dict) -> float:
    """Order-0 entropy bound of one quantized entry, in bits.

    The levels of each width are counted against their own histogram (per tensor and width,
    the model the version-2 artifact codes with), the per-group widths against theirs, plus
    the header (``sizes.header_bits``). No coder that sees one symbol at a time without context
    does better.
    """
    numel, gs = numel_of(entry["shape"]), entry["group_size"]
    bits = entry_group_bits(entry)
    if not numel:
        return float(header_bits(0, 0))
    levels = unpack_levels(entry_levels_data(entry), bits, numel, gs).to(torch.int64)
    widths = bits.repeat_interleave(group_lengths(numel, gs))
    # One histogram per width: key = width * 2**15 + level.
    counts = torch.bincount(widths * 2**15 + levels, minlength=16 * 2**15).view(16, 2**15)
    total = sum(_order0_bits(row) for row in counts[int(bits.min()) : int(bits.max()) + 1])
    return total + _order0_bits(torch.bincount(bits)) + header_bits(0, 0)


def summarize_state(state: dict) -> dict:
    """Float32 size, true quantized size, mean bits and a per-layer table of a state.

    The true size counts each quantized tensor as ``tensor_bits`` does (bits, header, packed
    per-group widths); kept tensors count 32 bits per value (16 with ``float16``), as
    ``true_model_size()`` does. ``bound_mb`` (per layer and in total) is the order-0 entropy
    bound (``entropy_bits``) with kept tensors and, in the total, buffers at their stored size:
    what an ideal per-tensor order-0 coder would need for the same content.
    """
    float16 = bool((state.get("config") or {}).get("float16", False))
    layers, true_bits, float_values, qbits, qnumel = [], 0, 0, 0, 0
    bound_bits = 0.0
    for name, entry in state["quantized"].items():
        numel = numel_of(entry["shape"])
        bits = entry_group_bits(entry)
        side = 16 * entry["scales"].numel() if "scales" in entry else 0  # float16 per scale
        payload, size = tensor_bits(bits, numel, entry["group_size"], side)
        bound = entropy_bits(entry) + side
        true_bits += size
        bound_bits += bound
        float_values += numel
        qbits += payload
        qnumel += numel
        layers.append(
            {
                "name": name,
                "numel": numel,
                "bits_mean": payload / numel,
                "bits_min": int(bits.min()),
                "bits_max": int(bits.max()),
                "mb": size / MIB_BITS,
                "bound_mb": bound / MIB_BITS,
                "grid": entry["scheme"],  # minmax, lsq (per-tensor step), channel, learned
            }
        )
    for name, t in state["floats"].items():
        width = 16 if float16 and t.is_floating_point() else t.element_size() * 8
        true_bits += width * t.numel()
        bound_bits += t.element_size() * 8 * t.numel()
        float_values += t.numel()
        layers.append(
            {
                "name": name,
                "numel": t.numel(),
                "bits_mean": float(width),
                "bits_min": width,
                "bits_max": width,
                "mb": width * t.numel() / MIB_BITS,
                "bound_mb": t.element_size() * 8 * t.numel() / MIB_BITS,
            }
        )
    # Buffers (e.g. batch-norm statistics) are not part of the true size but a file holds them.
    bound_bits += sum(t.element_size() * 8 * t.numel() for t in state["buffers"].values())
    float_mb = 32 * float_values / MIB_BITS
    true_mb = true_bits / MIB_BITS
    return {
        "float_mb": float_mb,
        "true_mb": true_mb,
        "compression": compression(float_mb, true_mb),  # vs the true size; files: files/inspect.py
        "bound_mb": bound_bits / MIB_BITS,
        "mean_bits": qbits / qnumel if qnumel else None,
        # The grids the quantized tensors use (minmax, lsq, channel, learned), once each.
        "grid": ", ".join(sorted({e["scheme"] for e in state["quantized"].values()})) or None,
        "quantized_params": qnumel,
        "params": float_values,
        "layers": layers,
    }
