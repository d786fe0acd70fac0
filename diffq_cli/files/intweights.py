"""Integer weights: each quantized tensor of a state as integers and one scale per output row.

``int_weight(entry)`` maps one ``quantized`` entry of a state to ``value = q * scale[row]
(+ offset[row])``, with ``q`` an int8 / uint8 / int16 tensor of the weight's shape, or None when
no such form holds the tensor's values (it then stays a float tensor in the export). Per scheme:

- ``learned`` (level ``q + 2**(b-1)``, value ``(2q + offset) * alpha / 2**b``, ``offset`` 1 for
  the mid-rise levels, 0 in older files): every value is ``(2q + offset) * 2**(7-b)`` times
  ``alpha / 2**7`` -- int8 with the scale ``alpha / 128`` per row, whatever the widths of the
  row's groups -- up to 7 bits (mid-rise) or 8 (older files); above, int16 with ``alpha /
  2**15`` up to 15 (16) bits. Both are **exact**: the scale is ``alpha`` times a power of two,
  so ``q * scale`` rounds the same real number once, as the reference decode does.
- ``lsq`` (``(level - offset) * step``, one step per tensor): ``level - offset`` on int8 (int16
  when it needs more), scale ``step``: **exact**.
- ``minmax`` and ``channel`` (``low + L * (high - low) / (2**b - 1)``, ``b`` per group, ``low``
  and ``high`` per tensor or per row): there is no zero level, so the form has an ``offset``
  (``low``). A row whose groups share one width keeps its levels and step: **exact**. A row
  with several widths is put on the common grid of ``M = lcm(2**b - 1)`` steps (widths 1, 2, 4
  and 8 all divide 255; 2, 3 and 4 give 105), level ``L * M / (2**b - 1)``: the same real
  values, rounded from a different step, so **near-exact** (a float32 ulp or two; ``exact`` is
  False). Rows with ``M`` above 255 need int16; above 32767 the tensor stays float. Fractional
  uniform widths (a ``qmax`` per tensor) share one step: exact.

``IntModel(model, state)`` holds those integers as buffers and dequantizes them in its forward
(one multiply per layer, plus an add for ``minmax``/``channel``), for ``torch.export``; the
saved program loads with plain PyTorch and holds a byte (two for int16) per weight.
"""

import copy
import functools

import torch
from torch import nn

from diffq_cli.quant.grids import per_group, rows_of
from diffq_cli.quant.pack import unpack_levels
from diffq_cli.quant.state import entry_group_bits, entry_levels_data, numel_of

_HALF_TINY = 2.0**-14  # the channel grid's smallest span (grids._channel_steps)
_RANGES = ((torch.uint8, 0, 255), (torch.int8, -128, 127), (torch.int16, -32768, 32767))


def _narrowest(q: torch.Tensor):
    """``q`` on the narrowest of uint8 / int8 / int16 that holds it, or None."""
    lo, hi = (int(v) for v in torch.aminmax(q)) if q.numel() else (0, 0)
    for dtype, a, b in _RANGES:
        if a <= lo and hi <= b:
            return q.to(dtype)
    return None


def _row_of_each(shape, numel: int) -> torch.Tensor:
    return torch.arange(numel) // rows_of(shape)[1]


def _learned(entry, levels, bits_e, rows):
    top = int(bits_e.max()) if bits_e.numel() else 1
    q = levels - torch.exp2(bits_e - 1).long()
    if int(entry["offset"]):  # mid-rise: 2q + 1 odd multiples of alpha / 2**b, one bit more
        q, top, bits_e = 2 * q + 1, top + 1, bits_e + 1
    width = 8 if top <= 8 else 16
    if top > 16:
        return None
    scale = entry["scales"].float() / 2.0 ** (width - 1)  # alpha * 2**(1-width): exact
    return q << (width - bits_e), scale, None, True


def _affine(entry, levels, bits_e, rows, shape):
    """minmax / channel: per row (low, span) as the reference decode computes them."""
    if entry["scheme"] == "channel":
        low, high = entry["scales"].float().unbind(1)
        span = (high - low).clamp_min(_HALF_TINY)
    else:
        low = torch.tensor(entry["low"], dtype=torch.float32).expand(rows)
        span = (torch.tensor(entry["high"], dtype=torch.float32) - low).expand(rows)
    if entry["qmax"] is not None:  # one step for the whole tensor
        return levels, span / torch.tensor(entry["qmax"], dtype=torch.float32), low, True
    qmax_e = (1 << bits_e) - 1
    if qmax_e.numel() and int(qmax_e.min()) < 1:
        return None
    row_e = _row_of_each(shape, levels.numel())
    present = torch.zeros(rows, 17, dtype=torch.bool)
    present[row_e, bits_e] = True
    common = torch.ones(rows, dtype=torch.int64)
    for w in range(1, 17):
        common = torch.lcm(common, torch.where(present[:, w], (1 << w) - 1, 1))
    if int(common.max()) > 32767:
        return None
    q = levels * (common[row_e] // qmax_e)
    exact = bool((present.sum(1) <= 1).all())  # one width per row: the very levels and step
    return q, span / common.float(), low, exact


def int_weight(entry: dict) -> dict | None:
    """One ``quantized`` entry as ``{"q", "scale", "offset", "exact"}`` (module docstring):
    ``q`` integers in the weight's shape, ``scale`` and ``offset`` (None: zero) float32 per
    row; None when the tensor has no integer form of at most 16 bits."""
    shape = tuple(entry["shape"])
    numel = numel_of(shape)
    gs = entry["group_size"]
    bits = entry_group_bits(entry)
    levels = unpack_levels(entry_levels_data(entry), bits, numel, gs).long()
    bits_e = per_group(bits, numel, gs)
    rows = rows_of(shape)[0]
    if entry["scheme"] == "learned":
        mapped = _learned(entry, levels, bits_e, rows)
    elif entry["scheme"] == "lsq":
        scale = torch.tensor(entry["step"], dtype=torch.float32).expand(rows)
        mapped = levels - int(entry["offset"]), scale, None, True
    elif entry["scheme"] in ("minmax", "channel"):
        mapped = _affine(entry, levels, bits_e, rows, shape)
    else:
        mapped = None
    if mapped is None:
        return None
    q, scale, offset, exact = mapped
    q = _narrowest(q)
    if q is None:
        return None
    return {"q": q.view(shape), "scale": scale.float().contiguous(),
            "offset": None if offset is None else offset.float().contiguous(), "exact": exact}


def int_weights(state: dict) -> dict:
    """``int_weight`` of every quantized tensor of ``state`` that has an integer form."""
    out = {}
    for name, entry in state["quantized"].items():
        mapped = int_weight(entry)
        if mapped is not None:
            out[name] = mapped
    return out


def int_summary(state: dict, mapped: dict) -> dict:
    """Counts for the export report: tensors per storage dtype, near-exact ones, float ones."""
    counts = {}
    for w in mapped.values():
        key = str(w["q"].dtype).replace("torch.", "")
        counts[key] = counts.get(key, 0) + 1
    return {"tensors": counts, "near_exact": sum(not w["exact"] for w in mapped.values()),
            "float": len(state["quantized"]) - len(mapped)}


def dequantize(q, scale, offset, dtype=torch.float32):
    """``q * scale (+ offset)`` with ``scale``/``offset`` broadcast along dim 0."""
    view = (-1,) + (1,) * (q.dim() - 1) if q.dim() > 1 else ()
    # A vectorised copy, then an in-place multiply (torch.export keeps ``mul_``): one float
    # buffer per layer and call; ``q * scale`` (mixed dtypes) runs a slower casting loop.
    w = q.to(torch.float32).mul_(scale.view(view) if view else scale)
    if offset is not None:
        w = w.add_(offset.view(view) if view else offset)
    return w if dtype == torch.float32 else w.to(dtype)


class IntModel(nn.Module):
    """``model`` with the quantized weights of ``state`` held as integers (module docstring).

    Each module owning such a weight gets buffers ``<name>_q``, ``<name>_s`` (and ``<name>_o``)
    in its place and a subclass whose ``<name>`` property dequantizes them, so the multiply
    runs where the layer reads its weight: ``torch.export`` puts it right before the layer,
    and only one layer's float weight is alive at a time.

    Args:
        model: the architecture with the restored weights (a copy is taken; the parameters
            that get an integer form are dropped from it, the others stay).
        state: the quantized state ``model`` was restored from.
        mapped: ``int_weights(state)`` if already computed.
    """

    def __init__(self, model: nn.Module, state: dict, mapped: dict | None = None):
        super().__init__()
        net = copy.deepcopy(model)
        mapped = int_weights(state) if mapped is None else mapped
        aliases = {}  # a tied parameter is replaced under each of its names
        for name, p in net.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(name)
        params = dict(net.named_parameters(remove_duplicate=False))
        owners = {}  # module path -> {attribute: integer form}
        self._names = []
        for name, w in mapped.items():
            w = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in w.items()}
            for alias in aliases[id(params[name])]:
                module, _, attr = alias.rpartition(".")
                owners.setdefault(module, {})[attr] = (w, params[name].dtype)
                self._names.append(alias)
        for path, attrs in owners.items():
            _attach(net.get_submodule(path), attrs)
        self.net = net

    def weights(self) -> dict:
        """The dequantized weights, by parameter name."""
        out = {}
        for name in self._names:
            module, _, attr = name.rpartition(".")
            out[name] = getattr(self.net.get_submodule(module), attr)
        return out

    def forward(self, x):
        return self.net(x)


def _attach(module: nn.Module, attrs: dict) -> None:
    """Swaps ``module``'s parameters ``attrs`` for integer buffers and dequantizing properties."""
    dtypes = {}
    for attr, (w, dtype) in attrs.items():
        del module._parameters[attr]
        module.register_buffer(f"{attr}_q", w["q"])
        module.register_buffer(f"{attr}_s", w["scale"])
        if w["offset"] is not None:
            module.register_buffer(f"{attr}_o", w["offset"])
        dtypes[attr] = dtype
    module._int_dtypes = dtypes
    cls = module.__class__
    props = {attr: property(functools.partial(_dequantized, attr=attr)) for attr in attrs}
    module.__class__ = type(f"Int{cls.__name__}", (cls,), props)


def _dequantized(module: nn.Module, attr: str) -> torch.Tensor:
    buffers = module._buffers
    return dequantize(buffers[f"{attr}_q"], buffers[f"{attr}_s"], buffers.get(f"{attr}_o"),
                      module._int_dtypes[attr])
