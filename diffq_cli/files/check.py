"""Deep checks of a quantized state and an artifact read from a file.

A file can decompress and unpickle cleanly and still be wrong (a damaged plain file, a file
written by another tool, a hand-edited one). Everything the readers use later (``restore``,
``summarize_state``, the exports) indexes fields and slices ``data`` without checking, so the
checks here run once, right after loading, and raise ``ValueError`` with a one-line reason.
They are cheap: only the packed per-group widths are unpacked, never the levels.
"""

import math

import numpy as np
import torch

from diffq_cli.files import nppack
from diffq_cli.quant.pack import MAX_WIDTH, packed_nbytes

SCHEMES = ("minmax", "lsq", "channel", "learned")


def level_chunks(widths: np.ndarray, numel: int, group_size: int) -> list[tuple[int, int]]:
    """(width, values) of each packed chunk of an entry's levels, in stream order, from the
    NumPy array of per-group widths.

    The layout written by ``quant.state``: the full groups sorted by width (stable), one chunk
    per width present (one chunk when all widths are equal), then the short last group if any.
    """
    full = numel // group_size
    chunks = []
    if full:
        counts = np.bincount(widths[:full], minlength=MAX_WIDTH + 1).tolist()
        chunks = [(width, count * group_size) for width, count in enumerate(counts) if count]
    if numel > full * group_size:
        chunks.append((int(widths[full]), numel - full * group_size))
    return chunks


def need(cond: bool, message: str) -> None:
    """Raises ValueError(message) unless ``cond``: the readers' one way to refuse a file."""
    if not cond:
        raise ValueError(message)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_entry(name: str, entry) -> None:
    """Raises ValueError unless one ``quantized`` entry is complete and self-consistent."""
    need(isinstance(entry, dict), f"entry '{name}' is not a dict")
    keys = ("shape", "dtype", "scheme", "group_size", "low", "high", "qmax", "step", "offset",
            "bits_min", "bits_width", "bits_nbytes", "data")
    missing = [k for k in keys if k not in entry]
    need(not missing, f"entry '{name}' lacks {', '.join(missing)}")
    shape = entry["shape"]
    need(isinstance(shape, (list, tuple)) and all(_is_int(s) and s >= 0 for s in shape),
          f"entry '{name}' has a bad shape {shape!r}")
    dtype = getattr(torch, entry["dtype"], None) if isinstance(entry["dtype"], str) else None
    need(isinstance(dtype, torch.dtype) and dtype.is_floating_point,
          f"entry '{name}' has an unknown dtype {entry['dtype']!r}")
    need(entry["scheme"] in SCHEMES, f"entry '{name}' has an unknown scheme {entry['scheme']!r}")
    gs = entry["group_size"]
    need(_is_int(gs) and gs >= 1, f"entry '{name}' has a bad group size {gs!r}")
    for key in ("low", "high", "step"):
        need(_is_num(entry[key]), f"entry '{name}' has a bad {key} {entry[key]!r}")
    need(entry["qmax"] is None or _is_num(entry["qmax"]), f"entry '{name}' has a bad qmax")
    need(_is_int(entry["offset"]), f"entry '{name}' has a bad offset")
    lo, width, nbytes = entry["bits_min"], entry["bits_width"], entry["bits_nbytes"]
    need(_is_int(lo) and 1 <= lo <= MAX_WIDTH, f"entry '{name}' has a bad bits_min {lo!r}")
    need(_is_int(width) and 0 <= width <= 4, f"entry '{name}' has a bad bits_width {width!r}")
    data = entry["data"]
    need(torch.is_tensor(data) and data.dtype == torch.uint8 and data.dim() == 1,
          f"entry '{name}': data is not a 1-D uint8 tensor")
    numel = math.prod(shape)
    # Every value takes at least one bit: guards the allocations below against a huge shape.
    need(numel <= 8 * data.numel(), f"entry '{name}': data too short for shape {list(shape)}")
    groups = -(-numel // gs)
    need(_is_int(nbytes) and nbytes == (packed_nbytes(groups, width) if width else 0),
          f"entry '{name}': bits_nbytes {nbytes!r} does not match its {groups} groups")
    # NumPy, single-threaded: this runs on every file read, often on busy cores.
    if width:
        bits = nppack.unpack(data[:nbytes].numpy(), width, groups) + np.uint8(lo)
    else:
        bits = np.full(groups, lo, dtype=np.uint8)
    need(not groups or int(bits.max()) <= MAX_WIDTH,
          f"entry '{name}': a group is wider than {MAX_WIDTH} bits")
    wanted = nbytes + sum(packed_nbytes(n, w) for w, n in level_chunks(bits, numel, gs))
    need(data.numel() >= wanted,
         f"entry '{name}': level data is {data.numel()} bytes, needs {wanted}")
    check_scales(name, entry)


def check_scales(name: str, entry: dict) -> None:
    """Per-channel grids: float16 ``scales``, one (``learned``: > 0) or two per row."""
    if entry["scheme"] not in ("channel", "learned"):
        return
    scales, shape = entry.get("scales"), list(entry["shape"])
    rows = shape[0] if len(shape) >= 2 and shape[0] > 0 else 1
    want = [rows] if entry["scheme"] == "learned" else [rows, 2]
    need(torch.is_tensor(scales) and scales.dtype == torch.float16
          and list(scales.shape) == want, f"entry '{name}' lacks its {want} float16 scales")
    need(bool(torch.isfinite(scales).all()), f"entry '{name}' has non-finite scales")
    need(entry["scheme"] == "channel" or bool((scales > 0).all()),
          f"entry '{name}' has a scale <= 0")
    need(entry["scheme"] == "channel" or entry["offset"] in (0, 1),
          f"entry '{name}' has a learned-grid offset {entry['offset']!r} (0 or 1)")


def _check_tensors(state: dict, group: str) -> None:
    tensors = state.get(group)
    need(isinstance(tensors, dict), f"state lacks its '{group}' dict")
    for name, t in tensors.items():
        need(isinstance(name, str) and torch.is_tensor(t), f"'{group}' entry {name!r} is bad")


def check_state_deep(state) -> None:
    """Raises ValueError unless ``state`` (format and version already checked) is usable."""
    need(isinstance(state.get("quantized"), dict), "state lacks its 'quantized' dict")
    for name, entry in state["quantized"].items():
        check_entry(str(name), entry)
    _check_tensors(state, "floats")
    _check_tensors(state, "buffers")


def check_artifact_sections(obj: dict) -> None:
    """Raises ValueError unless the sections an artifact reader uses have the right types."""
    spec = obj.get("model")
    need(isinstance(spec, dict), "artifact lacks its 'model' section")
    need(isinstance(spec.get("name"), str), "artifact 'model' section lacks the model name")
    for key in ("num_classes", "in_chans"):
        need(_is_int(spec.get(key)) and spec[key] > 0,
              f"artifact 'model' section has a bad {key} {spec.get(key)!r}")
    for key in ("data", "recipe", "metrics"):
        need(obj.get(key) is None or isinstance(obj[key], dict),
              f"artifact '{key}' section is not a dict")
