"""Entropy coding of a quantized state, for the version-2 artifact.

The library's state (``quant/state.py``) stays bit-packed: restoring it is a few vectorised
unpacks (far faster than any entropy decoder), ``diffq export --format compact`` builds its
graph from those packed streams, and ``quant/`` keeps needing nothing but torch. Only the file
is entropy-coded: ``encode_state`` turns a state into the coded layout below and
``decode_state`` gives back the very same bit-packed state (byte for byte), so everything that
reads an artifact (``size``, ``eval``, ``export``) works unchanged on version 1 and 2.

Coded layout (plain types and tensors: ``torch.load(weights_only=True)`` reads it)::

    {"coding": CODING, "quantizer", "config", "floats", "buffers",   # as in the state
     "quantized": {name: {<the entry's fields but data/bits_nbytes>,
                          "streams": [{"kind": "bits"|"levels", "width", "n", "mode",
                                       "table": [start, end], "data": [start, end], "crc"}]}},
     "payload": uint8 tensor (every stream's bytes), "symbols": int16, "counts": int32}

Per tensor, one stream codes the per-group widths (when they differ), then one stream per
width the levels of all groups of that width (order-0, per tensor and width: the levels of
trained weights are peaked, which gzip over packed bits cannot see). ``mode`` is ``"ans"``
(constriction's ANS coder over the symbols present, with their exact ``counts`` stored as the
table at ``symbols[table]``/``counts[table]``; payload bytes are little-endian uint32 words),
``"const"`` (one symbol present: nothing but the table) or ``"packed"`` (``pack`` output, when
the table would cost more than coding saves, e.g. wide near-uniform levels). ``crc`` is the
CRC-32 of the decoded symbols as little-endian uint16; decoding also checks that the ANS coder
ends empty and that the histogram matches the table, so a damaged stream never decodes silently.
Floats and buffers stay raw tensors: they are under 1% of a model and the artifact's gzip
wrapper already takes what little there is to gain on them.
"""

import zlib

import numpy as np
import torch

from diffq_cli.files import nppack
from diffq_cli.files.check import level_chunks, need
from diffq_cli.quant.pack import packed_nbytes
from diffq_cli.quant.state import numel_of

CODING = "ans-order0-v1"
# Fields copied from a state entry unchanged (data and bits_nbytes are rebuilt on decode).
FIELDS = ("shape", "dtype", "scheme", "group_size", "low", "high", "qmax", "step", "offset",
          "bits_min", "bits_width")
OPTIONAL = ("scales",)  # per-channel grids only (float16 tensor, copied as is)
TABLE_BYTES = 6  # int16 symbol + int32 count per table row


def _model(counts: np.ndarray):
    import constriction

    # perfect=False: fast construction; encoder and decoder build it from the same counts.
    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


def _crc(symbols: np.ndarray) -> int:
    # The buffer itself, no tobytes() copy; uint8 symbols widen to the stored uint16 layout.
    return zlib.crc32(symbols.astype("<u2", copy=False))


def _group_widths(entry: dict, numel: int) -> np.ndarray:
    """uint8 width of each group of a bit-packed entry."""
    groups = -(-numel // entry["group_size"])
    if not entry["bits_width"]:
        return np.full(groups, entry["bits_min"], dtype=np.uint8)
    data = entry["data"][: entry["bits_nbytes"]].numpy()
    return nppack.unpack(data, entry["bits_width"], groups) + np.uint8(entry["bits_min"])


class _Writer:
    """Accumulates the payload and the tables of every stream."""

    def __init__(self):
        self.payload, self.symbols, self.counts = [], [], []
        self.nbytes = self.nrows = 0

    def _span(self, chunk: np.ndarray) -> list:
        start = self.nbytes
        self.payload.append(chunk)
        self.nbytes += chunk.size
        return [start, self.nbytes]

    def _table(self, symbols: np.ndarray, counts: np.ndarray) -> list:
        start = self.nrows
        self.symbols.append(symbols.astype(np.int16))
        self.counts.append(counts.astype(np.int32))
        self.nrows += symbols.size
        return [start, self.nrows]

    def add(self, kind: str, width: int, values: np.ndarray, pack_width: int, offset: int):
        """Codes ``values`` (one stream, uint8 or uint16); ``pack_width``/``offset``: the
        packed fallback."""
        import constriction

        n = int(values.size)
        stream = {"kind": kind, "width": width, "n": n, "mode": "packed",
                  "table": [0, 0], "data": [0, 0], "crc": _crc(values)}
        if n == 0:
            return stream
        counts = np.bincount(values)  # linear time; np.unique would sort millions of values
        symbols = np.flatnonzero(counts)
        counts = counts[symbols]
        if symbols.size == 1:
            stream.update(mode="const", table=self._table(symbols, counts))
            return stream
        lut = np.zeros(int(symbols[-1]) + 1, dtype=np.int32)
        lut[symbols] = np.arange(symbols.size, dtype=np.int32)
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(lut[values], _model(counts))
        words = coder.get_compressed().astype("<u4").view(np.uint8)
        packed = np.empty(packed_nbytes(n, pack_width), dtype=np.uint8)
        if words.size + TABLE_BYTES * symbols.size < packed.size:
            stream.update(mode="ans", table=self._table(symbols, counts), data=self._span(words))
        else:
            nppack.pack_into(packed, values - values.dtype.type(offset), pack_width)
            stream.update(data=self._span(packed))
        return stream

    def tensors(self) -> dict:
        def cat(parts, dtype):
            return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, dtype))

        return {"payload": cat(self.payload, np.uint8), "symbols": cat(self.symbols, np.int16),
                "counts": cat(self.counts, np.int32)}


def _levels_by_width(entry: dict, widths: np.ndarray, numel: int) -> dict:
    """{width: levels (uint8, or uint16 above 8 bits) of every group of that width, in stream
    order} of one entry."""
    data = entry["data"][entry["bits_nbytes"] :].numpy()
    pos, out = 0, {}
    for width, n in level_chunks(widths, numel, entry["group_size"]):
        size = packed_nbytes(n, width)
        out.setdefault(width, []).append(nppack.unpack(data[pos : pos + size], width, n))
        pos += size
    return {w: parts[0] if len(parts) == 1 else np.concatenate(parts) for w, parts in out.items()}


def encode_state(state: dict) -> dict:
    """The coded form of a (checked) bit-packed quantized state (see the module docstring)."""
    writer, quantized = _Writer(), {}
    for name, entry in state["quantized"].items():
        numel = numel_of(entry["shape"])
        widths = _group_widths(entry, numel)
        streams = []
        if entry["bits_width"]:
            streams.append(writer.add("bits", 0, widths, entry["bits_width"], entry["bits_min"]))
        for width, values in sorted(_levels_by_width(entry, widths, numel).items()):
            streams.append(writer.add("levels", width, values, width, 0))
        quantized[name] = {**{k: entry[k] for k in (*FIELDS, *OPTIONAL) if k in entry},
                           "streams": streams}
    return {"coding": CODING, "quantizer": state["quantizer"], "config": state["config"],
            "quantized": quantized, "floats": state["floats"], "buffers": state["buffers"],
            **writer.tensors()}


# ---------------------------------------------------------------------- decoding
def _span(value, limit: int, what: str) -> tuple[int, int]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    need(ok and 0 <= value[0] <= value[1] <= limit, f"{what} points outside the file")
    return value[0], value[1]


def _decode_stream(arrays: dict, stream, n: int, width: int, offset: int, limit: int,
                   where: str) -> np.ndarray:
    """The symbols (below ``limit``; uint8 up to 256, else uint16) of one stream, checked
    against its length, table and CRC; ``width``/``offset``: how the packed fallback stores
    them. ``arrays``: the coded state's payload, symbols and counts as NumPy arrays."""
    import constriction

    need(isinstance(stream, dict) and stream.get("n") == n,
          f"{where}: stream length does not match the tensor")
    t0, t1 = _span(stream.get("table"), arrays["symbols"].size, f"{where} table")
    d0, d1 = _span(stream.get("data"), arrays["payload"].size, f"{where} data")
    mode = stream.get("mode")
    narrow = np.uint8 if limit <= 256 else np.uint16
    symbols, counts = arrays["symbols"][t0:t1], arrays["counts"][t0:t1]
    # Every decoded value is a table symbol: checking the table bounds every value.
    need(symbols.size == 0 or (int(symbols.min()) >= 0 and int(symbols.max()) < limit),
          f"{where}: symbols out of range")
    symbols = symbols.astype(narrow)
    if mode == "packed":
        need(d1 - d0 == packed_nbytes(n, width), f"{where}: packed stream has the wrong size")
        values = nppack.unpack(arrays["payload"][d0:d1], width, n).astype(narrow, copy=False)
        if offset:
            values += narrow(offset)
        need(values.size == 0 or int(values.max()) < limit, f"{where}: symbols out of range")
    elif mode == "const":
        need(symbols.size == 1 and int(counts[0]) == n, f"{where}: bad constant stream")
        values = np.full(n, symbols[0], dtype=narrow)
    elif mode == "ans":
        need(symbols.size >= 2 and (d1 - d0) % 4 == 0 and bool((counts > 0).all())
              and int(counts.sum(dtype=np.int64)) == n, f"{where}: bad table or stream size")
        words = arrays["payload"][d0:d1].view("<u4").astype(np.uint32)
        try:
            coder = constriction.stream.stack.AnsCoder(words)
            index = coder.decode(_model(counts), n)
        except (ValueError, RuntimeError) as err:
            raise ValueError(f"{where}: corrupt coded stream ({err})") from None
        need(coder.is_empty(), f"{where}: corrupt coded stream (it does not end where it should)")
        need(np.array_equal(np.bincount(index, minlength=symbols.size), counts),
              f"{where}: corrupt coded stream (histogram differs from its table)")
        values = symbols[index]
    else:
        raise ValueError(f"{where}: unknown stream mode {mode!r}")
    need(_crc(values) == stream.get("crc"), f"{where}: CRC mismatch, the file is damaged")
    return values


def _decode_entry(arrays: dict, name: str, centry) -> dict:
    need(isinstance(centry, dict) and all(k in centry for k in (*FIELDS, "streams")),
          f"entry '{name}' lacks fields")
    streams = list(centry["streams"]) if isinstance(centry["streams"], list) else None
    need(streams is not None, f"entry '{name}' has no stream list")
    entry = {k: centry[k] for k in (*FIELDS, *OPTIONAL) if k in centry}
    shape, gs, lo, bw = entry["shape"], entry["group_size"], entry["bits_min"], entry["bits_width"]
    need(isinstance(gs, int) and gs >= 1 and isinstance(lo, int) and 1 <= lo <= 15
          and isinstance(bw, int) and 0 <= bw <= 4 and isinstance(shape, list)
          and all(isinstance(s, int) and s >= 0 for s in shape), f"entry '{name}' is malformed")
    numel = numel_of(shape)
    need(numel <= 64 * arrays["payload"].size + 2**20, f"entry '{name}': shape too large")
    groups = -(-numel // gs)
    if bw:
        need(bool(streams) and streams[0].get("kind") == "bits", f"entry '{name}' lacks widths")
        widths = _decode_stream(arrays, streams.pop(0), groups, bw, lo, 16,
                                f"entry '{name}' widths")
        need(bool(widths.size) and int(widths.min()) >= lo and int(widths.max()) <= 15
              and int(widths.max()) - lo < 2**bw, f"entry '{name}': bad widths")
    else:
        widths = np.full(groups, lo, dtype=np.uint8)
    chunks = level_chunks(widths, numel, gs)
    counts = {}
    for width, n in chunks:
        counts[width] = counts.get(width, 0) + n
    need(len(streams) == len(counts), f"entry '{name}': wrong number of level streams")
    by_width = {}
    for stream, (width, n) in zip(streams, sorted(counts.items()), strict=True):
        need(stream.get("kind") == "levels" and stream.get("width") == width,
              f"entry '{name}': level streams out of order")
        by_width[width] = _decode_stream(arrays, stream, n, width, 0, 2**width,
                                         f"entry '{name}' {width}-bit")
    # Re-pack straight into the entry's one buffer: widths first, then each chunk's levels.
    bits_nbytes = packed_nbytes(groups, bw) if bw else 0
    sizes = [packed_nbytes(n, width) for width, n in chunks]
    data = np.empty(bits_nbytes + sum(sizes), dtype=np.uint8)
    if bw:
        nppack.pack_into(data[:bits_nbytes], widths - np.uint8(lo), bw)
    pos, used = bits_nbytes, dict.fromkeys(counts, 0)
    for (width, n), size in zip(chunks, sizes, strict=True):
        nppack.pack_into(data[pos : pos + size], by_width[width][used[width] : used[width] + n],
                         width)
        used[width] += n
        pos += size
    entry["bits_nbytes"] = bits_nbytes
    entry["data"] = torch.from_numpy(data)
    return entry


def decode_state(coded, state_format: str, state_version: int) -> tuple[dict, dict]:
    """The bit-packed state a coded one stands for, and the coded bytes of each tensor.

    Raises:
        ValueError: a missing or malformed field, or a damaged stream (one line).
    """
    need(isinstance(coded, dict) and coded.get("coding") == CODING,
          "artifact state is not coded with " + CODING)
    arrays = {}
    for key, dtype in (("payload", torch.uint8), ("symbols", torch.int16),
                       ("counts", torch.int32)):
        t = coded.get(key)
        need(torch.is_tensor(t) and t.dtype == dtype and t.dim() == 1,
              f"coded state lacks its '{key}' tensor")
        arrays[key] = t.contiguous().numpy()
    need(isinstance(coded.get("quantized"), dict), "coded state lacks its 'quantized' dict")
    quantized, disk = {}, {}
    for name, centry in coded["quantized"].items():
        quantized[name] = _decode_entry(arrays, str(name), centry)
        disk[name] = sum(_stream_bytes(s) for s in centry["streams"])
    state = {"format": state_format, "version": state_version,
             "quantizer": coded.get("quantizer"), "config": coded.get("config"),
             "quantized": quantized, "floats": coded.get("floats"),
             "buffers": coded.get("buffers")}
    return state, disk


def _stream_bytes(stream: dict) -> int:
    """Bytes one stream takes in the file: its data plus its table."""
    (t0, t1), (d0, d1) = stream["table"], stream["data"]
    return (d1 - d0) + TABLE_BYTES * (t1 - t0)
