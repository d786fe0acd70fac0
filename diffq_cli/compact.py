"""The ``compact`` export: a module whose weights stay bit-packed, for ``torch.export``.

``CompactModel(model, state)`` holds the quantized levels of ``state`` re-packed for a small
graph: parameters with the same group size form a bucket; in a bucket, the groups of each bit
width (across all its tensors) are one ``pack`` stream, so the graph unpacks at most 15 streams
per bucket whatever the number of layers. Forward unpacks them, puts the groups back in order
(a stable sort of the packed per-group widths gives the permutation, nothing else is stored),
dequantizes with one range per tensor and runs the network with
``torch.func.functional_call``. Tensors that were not quantized stay ordinary parameters.

The module is only traced by ``torch.export``; the saved program holds aten ops and uint8/
float buffers, so loading it needs neither this class nor diffq_cli.
"""

import copy

import torch
from torch import nn

from diffq_cli.quant.pack import _planes, pack
from diffq_cli.quant.state import _unpack_levels
from diffq_cli.quant.summary import entry_bits


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _entry_rows(entry: dict, bits: torch.Tensor, gs: int) -> torch.Tensor:
    """Integer levels of one entry as (groups, gs) rows, the short last group zero-padded."""
    numel = _numel(entry["shape"])
    levels = _unpack_levels(entry["packed"], bits, numel, gs)
    pad = bits.numel() * gs - numel
    if pad:
        levels = torch.cat([levels, levels.new_zeros(pad)])
    return levels.view(-1, gs)


def _affine(entry: dict) -> tuple[float, float, float]:
    """(span, low, fixed qmax or 0) so that ``value = low + level * span / qmax``."""
    if entry["scheme"] == "lsq":  # (level - offset) * step
        return entry["step"], -entry["offset"] * entry["step"], 1.0
    # float32 like the reference decode, so both give the same rounding
    span = float(torch.tensor(entry["high"]) - torch.tensor(entry["low"]))
    return span, entry["low"], float(entry["qmax"] or 0.0)


class CompactModel(nn.Module):
    """``model`` with its quantized weights packed as in ``state`` (see the module docstring).

    Args:
        model: the architecture (a copy is taken; its quantized parameters are dropped).
        state: a quantized state (``quantizer.get_quantized_state()``) matching ``model``.
    """

    def __init__(self, model: nn.Module, state: dict):
        super().__init__()
        net = copy.deepcopy(model)
        aliases = {}  # a tied parameter is fed under each of its names
        for name, p in net.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(name)
        params = dict(net.named_parameters())
        by_size = {}
        for name, entry in state["quantized"].items():
            by_size.setdefault(entry["group_size"], []).append(name)
        self._plan = [self._add_bucket(b, gs, names, state, params, aliases)
                      for b, (gs, names) in enumerate(by_size.items())]
        for bucket in self._plan:
            for names, *_ in bucket["tensors"]:
                for name in names:
                    module, _, attr = name.rpartition(".")
                    del net.get_submodule(module)._parameters[attr]
        self.net = net

    def _add_bucket(self, b, gs, names, state, params, aliases) -> dict:
        bits, rows, affine, counts, tensors, start = [], [], [], [], [], 0
        for name in names:
            entry = state["quantized"][name]
            group_bits = entry_bits(entry)
            bits.append(group_bits)
            rows.append(_entry_rows(entry, group_bits, gs))
            affine.append(_affine(entry))
            counts.append(group_bits.numel())
            param = params[name]
            tensors.append((aliases[id(param)], start * gs, param.numel(), tuple(param.shape),
                            param.dtype))
            start += group_bits.numel()
        bits, rows = torch.cat(bits), torch.cat(rows)
        lo, hi = int(bits.min()), int(bits.max())
        width = (hi - lo).bit_length()
        if width:
            self.register_buffer(f"b{b}_bits", pack(bits - lo, width))
        widths = []
        for w in range(lo, hi + 1):
            chosen = rows[bits == w]  # boolean indexing keeps the original order
            if chosen.numel():
                self.register_buffer(f"b{b}_w{w}", pack(chosen, w))
                widths.append((w, chosen.shape[0]))
        self.register_buffer(f"b{b}_affine", torch.tensor(affine, dtype=torch.float32))
        self.register_buffer(f"b{b}_counts", torch.tensor(counts, dtype=torch.int64))
        return {"id": b, "gs": gs, "groups": bits.numel(), "bits_min": lo, "width": width,
                "widths": widths, "tensors": tensors}

    def _decode_bucket(self, plan: dict) -> dict:
        def buf(key):
            return getattr(self, f"b{plan['id']}_{key}")

        gs, groups = plan["gs"], plan["groups"]
        if plan["width"]:
            bits = _unpack(buf("bits"), plan["width"], groups)
        else:
            bits = torch.full((groups,), 0, dtype=torch.uint8)
        dtype = torch.int16 if plan["widths"][-1][0] > 8 else torch.uint8
        rows = [_unpack(buf(f"w{w}"), w, n * gs).to(dtype).view(n, gs) for w, n in plan["widths"]]
        rows = torch.cat(rows) if len(rows) > 1 else rows[0]
        if len(plan["widths"]) > 1:
            # Streams hold the groups sorted by width (stable): scatter them back in place.
            order = torch.sort(bits, stable=True).indices
            wide = _as_words(rows)
            rows = torch.empty_like(wide).index_copy_(0, order, wide).view(rows.dtype).view(-1, gs)
        # One (span, low, fixed qmax) row per tensor, expanded to one per group.
        affine = buf("affine").repeat_interleave(buf("counts"), dim=0, output_size=groups)
        span, low, fixed = affine.unbind(1)
        qmax = torch.where(fixed > 0, fixed, torch.pow(2.0, bits.float() + plan["bits_min"]) - 1)
        # In place on the one float copy: each pass over ~all weights costs a fresh buffer.
        flat = rows.float().mul_((span / qmax)[:, None]).add_(low[:, None]).view(-1)
        out = {}
        for names, start, numel, shape, dtype in plan["tensors"]:
            weight = flat[start : start + numel].view(shape).to(dtype)
            out.update((name, weight) for name in names)
        return out

    def weights(self) -> dict:
        """The dequantized weights, by parameter name."""
        out = {}
        for plan in self._plan:
            out.update(self._decode_bucket(plan))
        return out

    def forward(self, x):
        return torch.func.functional_call(self.net, self.weights(), (x,), strict=False)


def _as_words(rows: torch.Tensor) -> torch.Tensor:
    """Rows viewed as int64 words when they fit (moving 8 bytes at a time is much faster)."""
    nbytes = rows.shape[1] * rows.element_size()
    return rows.view(torch.int64) if nbytes % 8 == 0 else rows


def _unpack(data: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """``pack.unpack`` as a few broadcast ops per plane (a short graph with contiguous writes)."""
    out, start = None, 0
    for shift, bits in _planes(width):
        size = (n * bits + 7) // 8
        plane = data[start : start + size]
        start += size
        if bits < 8:
            shifts = torch.arange(0, 8, bits, dtype=torch.uint8)
            plane = ((plane[:, None] >> shifts) & ((1 << bits) - 1)).view(-1)[:n]
        if width > 8:
            plane = plane.to(torch.int16)
        out = plane if out is None else out | (plane << shift)
    return out
