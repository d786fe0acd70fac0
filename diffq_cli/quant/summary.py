"""Sizes and per-layer bit statistics read from a saved quantized state (no model needed)."""

from diffq_cli.quant.state import entry_group_bits, numel_of, tensor_bits

MB_BITS = 8 * 2**20


def summarize_state(state: dict) -> dict:
    """Float32 size, true quantized size, mean bits and a per-layer table of a state.

    The true size counts each quantized tensor as ``tensor_bits`` does (bits, header, packed
    per-group widths); kept tensors count 32 bits per value (16 with ``float16``), as
    ``true_model_size()`` does.
    """
    float16 = bool(state.get("config", {}).get("float16", False))
    layers, true_bits, float_values, qbits, qnumel = [], 0, 0, 0, 0
    for name, entry in state["quantized"].items():
        numel = numel_of(entry["shape"])
        bits = entry_group_bits(entry)
        payload, size = tensor_bits(bits, numel, entry["group_size"])
        true_bits += size
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
                "mb": size / MB_BITS,
            }
        )
    for name, t in state["floats"].items():
        width = 16 if float16 and t.is_floating_point() else t.element_size() * 8
        true_bits += width * t.numel()
        float_values += t.numel()
        layers.append(
            {
                "name": name,
                "numel": t.numel(),
                "bits_mean": float(width),
                "bits_min": width,
                "bits_max": width,
                "mb": width * t.numel() / MB_BITS,
            }
        )
    float_mb = 32 * float_values / MB_BITS
    true_mb = true_bits / MB_BITS
    return {
        "float_mb": float_mb,
        "true_mb": true_mb,
        "compression": float_mb / true_mb if true_mb else None,
        "mean_bits": qbits / qnumel if qnumel else None,
        "quantized_params": qnumel,
        "params": float_values,
        "layers": layers,
    }
