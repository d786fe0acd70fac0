"""The quantized state: build it from encoded parameters, restore it into a model.

Layout (only tensors and primitives, so ``torch.load(weights_only=True)`` reads it)::

    {"format": "diffq_cli.quantized_state", "version": 1,
     "quantizer": "DiffQuantizer", "config": {...},
     "quantized": {name: {"shape", "dtype", "scheme", "group_size", "low", "high", "qmax",
                          "step", "offset", "bits_min", "bits_width", "bits_nbytes", "data",
                          ["scales"]}},
     "floats": {name: tensor}, "buffers": {name: tensor}}

Groups of a parameter are stored sorted by bit width (stable), each run of equal width packed
with ``pack``. ``data`` holds first (``bits_nbytes`` bytes) the packed per-group widths
(``bits_min`` + a ``bits_width``-bit offset each), which is all that is needed to undo the sort,
then the packed levels. Every ``data`` tensor is a view into one shared uint8 buffer and the
float tensors into one buffer per dtype, so ``torch.save`` writes a handful of storages
instead of one zip record per tensor.

Schemes: ``minmax`` (``low``/``high`` per tensor, optional ``qmax``), ``lsq`` (``step``,
``offset``), and the per-channel grids of ``grids.py``, whose entries alone carry ``scales``
(float16, views into one shared buffer): ``channel`` (rows, 2) = [low, high] per row, and
``learned`` (rows,) = ``alpha`` per row, levels stored as ``q + 2**(b-1)``, ``offset`` 1 for the
mid-rise levels ``(q + 1/2) * step`` (0 in files written before them: ``q * step``).
"""

import io
import zlib

import torch

from diffq_cli.quant import grids
from diffq_cli.quant.ops import minmax_dequantize
from diffq_cli.quant.pack import pack, pack_levels, unpack, unpack_levels

FORMAT = "diffq_cli.quantized_state"
VERSION = 1


def decode(enc: dict, numel: int, group_size: int) -> torch.Tensor:
    """Float32 flat values from an encoding made by a quantizer's ``_encode``."""
    if enc["scheme"] == "lsq":
        return (enc["levels"].float() - enc["offset"]) * enc["step"]
    if enc["scheme"] == "learned":
        scales = enc["scales"].float()
        return grids.learned_dequantize(enc["levels"], scales, enc["bits"], enc["shape"],
                                        group_size, int(enc.get("offset", grids.RISE)))
    if enc["scheme"] == "channel":  # files written when that grid was trained
        return grids.channel_dequantize(enc["levels"], enc["scales"], enc["bits"], enc["shape"],
                                        group_size, enc.get("qmax"))
    qmax = enc.get("qmax")
    if qmax is None:
        qmax = torch.pow(2.0, enc["bits"].float()) - 1
    qmax = torch.as_tensor(qmax, dtype=torch.float32).expand(enc["bits"].shape)
    return minmax_dequantize(enc["levels"], enc["low"], enc["high"], qmax, group_size)


def _shared(tensors: dict, cast_half: bool) -> dict:
    # One storage per dtype; every entry is a view into it.
    out, by_dtype = {}, {}
    for name, t in tensors.items():
        t = t.detach().cpu()
        if cast_half and t.is_floating_point():
            t = t.half()
        by_dtype.setdefault(t.dtype, []).append((name, t))
    for items in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for _, t in items])
        pos = 0
        for name, t in items:
            out[name] = flat[pos : pos + t.numel()].view(t.shape)
            pos += t.numel()
    return out


def build_state(quantizer, config, encoded, qparams, others, buffers, float16) -> dict:
    """Assembles the state dict (see the module docstring)."""
    entries, pieces, offset, scales = {}, [], 0, {}

    def add(chunks):
        nonlocal offset
        start = offset
        for c in chunks:
            pieces.append(c.reshape(-1).to(torch.uint8).cpu())
            offset += c.numel()
        return start, offset

    for name, enc in encoded.items():
        qp = qparams[name]
        bits = enc["bits"].to(torch.int64).cpu()
        lo, hi = (int(v) for v in torch.aminmax(bits))
        width = (hi - lo).bit_length()
        bits_span = add([pack(bits - lo, width)] if width else [])
        levels_span = add(pack_levels(enc["levels"].cpu(), bits, qp.group_size))
        entries[name] = {
            "shape": list(qp.param.shape),
            "dtype": str(qp.param.dtype).replace("torch.", ""),
            "scheme": enc["scheme"],
            "group_size": qp.group_size,
            "low": float(enc.get("low", 0.0)),
            "high": float(enc.get("high", 0.0)),
            "qmax": None if enc.get("qmax") is None else float(enc["qmax"]),
            "step": float(enc.get("step", 0.0)),
            "offset": int(enc.get("offset", 0)),
            "bits_min": lo,
            "bits_width": width,
            "_spans": (bits_span, levels_span),
        }
        if "scales" in enc:  # per-channel grids only: older schemes' entries are unchanged
            scales[name] = enc["scales"].to(torch.float16)
    blob = torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.uint8)
    for entry in entries.values():
        (b0, b1), (l0, l1) = entry.pop("_spans")
        # One view per entry (bits then levels): each tensor view costs ~100 bytes of pickle.
        entry["data"] = blob[b0:l1]
        entry["bits_nbytes"] = b1 - b0
    for name, t in _shared(scales, False).items():
        entries[name]["scales"] = t

    return {
        "format": FORMAT,
        "version": VERSION,
        "quantizer": quantizer,
        "config": config,
        "quantized": entries,
        "floats": _shared(dict(others), float16),
        "buffers": _shared(buffers, False),
    }


# ---------------------------------------------------------------------- reading
def check_state(state) -> None:
    """Raises ValueError unless ``state`` looks like a quantized state this version reads."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError("not a diffq quantized state (missing or wrong 'format' field)")
    if state.get("version") != VERSION:
        raise ValueError(
            f"quantized state version {state.get('version')} is not supported (this diffq reads "
            f"version {VERSION}); upgrade diffq-cli"
        )


def entry_group_bits(entry: dict) -> torch.Tensor:
    """Integer bit width of each group of one ``quantized`` entry (int64)."""
    numel = numel_of(entry["shape"])
    groups = -(-numel // entry["group_size"])
    if entry["bits_width"]:
        data = entry["data"][: entry["bits_nbytes"]]
        return unpack(data, entry["bits_width"], groups).to(torch.int64) + entry["bits_min"]
    return torch.full((groups,), entry["bits_min"], dtype=torch.int64)


def entry_levels_data(entry: dict) -> torch.Tensor:
    """The packed levels (uint8) of one ``quantized`` entry."""
    return entry["data"][entry["bits_nbytes"] :]


def numel_of(shape) -> int:
    """Number of values of a tensor of this shape."""
    n = 1
    for s in shape:
        n *= s
    return n


def dequantize_entry(entry: dict) -> torch.Tensor:
    """The float tensor (original dtype and shape) that one ``quantized`` entry stands for."""
    shape = entry["shape"]
    numel = numel_of(shape)
    gs = entry["group_size"]
    bits = entry_group_bits(entry)
    levels = unpack_levels(entry_levels_data(entry), bits, numel, gs)
    enc = {
        "scheme": entry["scheme"],
        "levels": levels,
        "bits": bits,
        "low": torch.tensor(entry["low"]),
        "high": torch.tensor(entry["high"]),
        "qmax": entry["qmax"],
        "step": entry["step"],
        "offset": entry["offset"],
        "shape": shape,
        "scales": entry.get("scales"),
    }
    dtype = getattr(torch, entry["dtype"])
    return decode(enc, numel, gs).view(shape).to(dtype)


def restore(model: torch.nn.Module, state: dict, skip=frozenset()) -> None:
    """Writes a quantized state into ``model``; names and shapes must match exactly.

    Args:
        skip: ids of model parameters the state does not hold (an attached quantizer's own).
    """
    check_state(state)
    # Every name of a shared (tied) Parameter: the state may hold it under any of them, or
    # under several (detect_bound=False), in which case the last one wins.
    named = [(n, p) for n, p in model.named_parameters(remove_duplicate=False) if id(p) not in skip]
    params = dict(named)
    buffers = dict(model.named_buffers())
    stored = {**state["quantized"], **state["floats"]}
    for name in stored:
        if name not in params:
            raise ValueError(f"state has parameter '{name}' that the model does not have")
    covered = {id(params[name]) for name in stored}
    for name, p in named:
        if id(p) not in covered:
            raise ValueError(f"model parameter '{name}' is missing from the quantized state")
    for name in state["buffers"]:
        if name not in buffers:
            raise ValueError(f"state has buffer '{name}' that the model does not have")
    values = {}
    for name, entry in state["quantized"].items():
        if list(entry["shape"]) != list(params[name].shape):
            raise ValueError(
                f"shape mismatch for '{name}': state {tuple(entry['shape'])}, "
                f"model {tuple(params[name].shape)}"
            )
        values[name] = dequantize_entry(entry)
    for name, t in state["floats"].items():
        if tuple(t.shape) != tuple(params[name].shape):
            raise ValueError(
                f"shape mismatch for '{name}': state {tuple(t.shape)}, "
                f"model {tuple(params[name].shape)}"
            )
        values[name] = t
    for name, t in state["buffers"].items():
        if tuple(t.shape) != tuple(buffers[name].shape):
            raise ValueError(
                f"shape mismatch for buffer '{name}': state {tuple(t.shape)}, "
                f"model {tuple(buffers[name].shape)}"
            )
    with torch.no_grad():
        for name, value in values.items():
            params[name].copy_(value)
        for name, t in state["buffers"].items():
            buffers[name].copy_(t)


def state_nbytes(state: dict) -> int:
    """Bytes of tensor data in a state (shared storages counted once)."""
    seen, total = set(), 0
    for group in ("floats", "buffers"):
        for t in state[group].values():
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    for entry in state["quantized"].values():
        for t in (entry["data"], *([entry["scales"]] if "scales" in entry else [])):
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


def compressed_bytes(state: dict, level: int = 6) -> bytes:
    """zlib-compressed ``torch.save`` bytes of ``state``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return zlib.compress(buf.getvalue(), level)
