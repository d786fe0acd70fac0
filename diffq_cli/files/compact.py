"""The ``compact`` export: a module whose weights stay bit-packed, for ``torch.export``.

``CompactModel(model, state)`` holds the quantized levels of ``state`` re-packed for a short
graph: parameters with the same group size form a bucket; in a bucket, the groups of each bit
width (across all its tensors) are one ``pack`` stream, so the graph unpacks at most 15 streams
per bucket whatever the number of layers. Forward unpacks them, puts the groups back in order
(a stable sort of the packed per-group widths gives the permutation: nothing else is stored),
dequantizes tensor by tensor with the same float32 operations as ``quant.state.restore`` (so
the weights are bit for bit those of the artifact) and runs the network through
``torch.func.functional_call``. Tensors that were not quantized stay ordinary parameters.

The module is only traced by ``torch.export``: the saved program holds aten ops, uint8 streams
and the float parameters, so loading it needs neither this class nor diffq_cli.
Tensors on the per-channel grids (schemes ``channel`` and ``learned``) are not packed yet: they
stay float parameters holding the restored (dequantized) values.
"""

import copy

import torch
from torch import nn

from diffq_cli.quant.pack import as_words, pack, planes, unpack_levels
from diffq_cli.quant.state import entry_group_bits, entry_levels_data, numel_of


def _entry_rows(entry: dict, bits: torch.Tensor, gs: int) -> torch.Tensor:
    """Integer levels of one entry as (groups, gs) rows, the short last group zero-padded."""
    numel = numel_of(entry["shape"])
    levels = unpack_levels(entry_levels_data(entry), bits, numel, gs)
    pad = bits.numel() * gs - numel
    if pad:
        levels = torch.cat([levels, levels.new_zeros(pad)])
    return levels.view(-1, gs)


def _affine(entry: dict) -> tuple:
    """How one tensor's levels become values, as float32 constants (the reference decode's
    rounding, op for op): ``("lsq", offset, step)`` for ``(level - offset) * step``, else
    ``("minmax", span, low, qmax)`` for ``level * (span / qmax) + low``, qmax None meaning
    ``2**bits - 1`` per group."""
    def f32(v):
        return torch.tensor(v, dtype=torch.float32)

    if entry["scheme"] == "lsq":
        return "lsq", float(entry["offset"]), float(entry["step"])
    span = f32(entry["high"]) - f32(entry["low"])
    if entry["qmax"] is None:
        return "minmax", float(span), float(f32(entry["low"])), None
    return "minmax", float(span / f32(entry["qmax"])), float(f32(entry["low"])), 1.0


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
        params = dict(net.named_parameters(remove_duplicate=False))  # a state may use any alias
        by_size = {}
        for name, entry in state["quantized"].items():
            if entry["scheme"] not in ("minmax", "lsq"):
                continue  # per-channel grids: kept as the (restored) float parameter
            by_size.setdefault(entry["group_size"], []).append(name)
        self._plan = [self._add_bucket(b, gs, names, state, params, aliases)
                      for b, (gs, names) in enumerate(by_size.items())]
        dropped = {name for plan in self._plan for names, *_ in plan["tensors"] for name in names}
        for name in dropped:
            module, _, attr = name.rpartition(".")
            del net.get_submodule(module)._parameters[attr]
        self.net = net

    def _add_bucket(self, b, gs, names, state, params, aliases) -> dict:
        bits, rows, tensors, start = [], [], [], 0
        for name in names:
            entry = state["quantized"][name]
            group_bits = entry_group_bits(entry)
            bits.append(group_bits)
            rows.append(_entry_rows(entry, group_bits, gs))
            param = params[name]
            end = start + group_bits.numel()
            tensors.append((aliases[id(param)], start, end, _affine(entry), tuple(param.shape),
                            param.dtype))
            start = end
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
        return {"id": b, "gs": gs, "groups": bits.numel(), "bits_min": lo, "width": width,
                "widths": widths, "tensors": tensors}

    def _decode_bucket(self, plan: dict) -> dict:
        def buf(key):
            return getattr(self, f"b{plan['id']}_{key}")

        gs, groups, widths = plan["gs"], plan["groups"], plan["widths"]
        if plan["width"]:
            bits = _unpack(buf("bits"), plan["width"], groups)
        else:
            bits = torch.zeros(groups, dtype=torch.uint8)
        dtype = torch.int16 if widths[-1][0] > 8 else torch.uint8
        streams = [_unpack(buf(f"w{w}"), w, n * gs).to(dtype).view(n, gs) for w, n in widths]
        if len(streams) == 1:
            rows = streams[0]
        else:
            # Streams hold the groups sorted by width (stable sort): the sort of the widths
            # says where each group goes back.
            order, start = torch.sort(bits, stable=True).indices, 0
            rows = torch.empty(groups, gs, dtype=dtype)
            words = as_words(rows)
            for stream in streams:
                words.index_copy_(0, order[start : start + len(stream)], as_words(stream))
                start += len(stream)
        if any(affine[-1] is None for _, _, _, affine, _, _ in plan["tensors"]):
            qmax = torch.pow(2.0, bits.float() + plan["bits_min"]) - 1  # per group
        out = {}
        for names, g0, g1, affine, shape, dtype in plan["tensors"]:
            # Tensor by tensor: buffers of one layer's size are reused by the allocator
            # from call to call, where one buffer for the whole model would be mapped afresh.
            values = rows[g0:g1].float()
            if affine[0] == "lsq":
                values.sub_(affine[1]).mul_(affine[2])
            else:
                _, span, low, fixed = affine
                # A tensor divided by a tensor: ``span / qmax`` would be reciprocal-and-multiply.
                delta = span if fixed else (torch.full((), span) / qmax[g0:g1])[:, None]
                values.mul_(delta).add_(low)
            numel = numel_of(shape)
            if numel != values.numel():  # the last group was padded
                values = values.view(-1)[:numel]
            weight = values.view(shape).to(dtype)
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


def _unpack(data: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """``pack.unpack`` as a few broadcast ops per plane (a short graph with contiguous writes)."""
    out, start = None, 0
    for shift, bits in planes(width):
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
