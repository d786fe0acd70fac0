"""Format stability: the checked-in golden artifacts pin what a file holds, bit for bit.

What a file stores (headers, integer widths and levels, coded streams) is pinned exactly: a
digest of each golden file's payload, a digest of the integer levels it decodes to (which pins
the level-packing order too), and the bytes today's code writes *from those stored levels*.
What float arithmetic produces (logits, levels computed from float weights, which another CPU
may round the other way at a boundary) is compared with a tolerance.

If a pinned digest changes, the file layout changed: bump the format version, keep a reader for
the old one and add a golden file of the new version (never edit a pin to make a test pass).
The digests are of a canonical walk of the objects (tests/golden.py), not of torch.save's
bytes, so a torch release that pickles differently does not break them. The quantizer's
``config`` is left out: options get added over time and readers only look up the keys they know.
"""

import gzip
import importlib
import io
from pathlib import Path

import pytest
import torch
from golden import digest, golden_diffq, golden_input, golden_model, golden_peaked_model
from typer.testing import CliRunner

from diffq_cli import UniformQuantizer, restore_quantized_state
from diffq_cli.cli.app import app
from diffq_cli.fileio import torch_bytes
from diffq_cli.files.artifact import read_file
from diffq_cli.files.coding import encode_state
from diffq_cli.quant.pack import pack, pack_levels, unpack_levels
from diffq_cli.quant.state import entry_group_bits, entry_levels_data, numel_of

DATA = Path(__file__).parent / "golden"
GOLDEN_V1 = DATA / "golden_v1.th"

GOLDEN_V1_PAYLOAD = "c4abe30671a5bf2ca01e0a73a909a9c50b485b4f820fa175199e7f30c894f254"
# Digests of the integer (widths, levels) each golden file decodes to: a change in the packing
# order or in one stored level byte changes them.
LEVELS = {
    "golden_v1.th": "7badaec98d6889bd734bfcbf8173c59281e929167e86d64558979f83d9f9194c",
    "golden_v2.th": "7badaec98d6889bd734bfcbf8173c59281e929167e86d64558979f83d9f9194c",
    "golden_v2_ans.th": "af22ff2b8d36837f38b2bc352def902dbb16061891a3aea190ea45d9770611eb",
    "golden_v2_learned0.th": "5fd2df880f542f86ebadcb05014ea1ecfe13a963525679d24b9f8c530a1fb7d7",
    "golden_v2_channel.th": "c704f31b9ffc412aadfe594afe72f16500b64d92838baac14b3ca25ffb0ca1e1",
}
# The tiny DiffQ model on the learned grid as written before its levels moved to mid-rise
# (entries with offset 0: value = q * step); tests/golden.py:write_golden_learned0.
GOLDEN_LEARNED0 = "e76e6328c58ab93ddbe348790b3492e99c9edd17ce42592e456547c81b607456"
# The tiny DiffQ model on the per-channel min/max grid, which training no longer offers
# (tests/golden.py:write_golden_channel): its files must keep decoding as written.
GOLDEN_CHANNEL = "623749aa81620b65a00217746b3595a25098091ee2862c599cd2c9f8983d6a0b"
# Version 2 (entropy-coded): the tiny DiffQ model (bit-packed and constant streams) and a wider
# peaked model at 4 bits (an ANS stream), written by tests/golden.py:write_golden_v2. Their coded
# states pin the coder's output: a constriction release that codes differently changes them.
GOLDEN_V2 = {
    "golden_v2.th": (golden_model, golden_diffq,
                     "d6b766e800b46c9a1cf692270dbf43831d29e9184fed3a14148b1abf8040e8a6", "const"),
    "golden_v2_ans.th": (golden_peaked_model, lambda m: UniformQuantizer(m, bits=4, min_size=0),
                         "df2f24077ca89c6f8c275b590002c87dc38915a6936e624bd5a9e3672cc527ee", "ans"),
}
# Logits of a model differ in their last bits between CPUs and thread counts (summation order).
ATOL = 1e-5
pack_module = importlib.import_module("diffq_cli.quant.pack")


def without_config(state: dict) -> dict:
    return {k: v for k, v in state.items() if k != "config"}


def payload(artifact: dict) -> dict:
    """What an artifact stores for the model, minus the library versions that wrote it."""
    out = {k: v for k, v in artifact.items() if k != "versions"}
    out["state"] = without_config(out["state"])
    return out


def levels_of(state: dict) -> dict:
    """{name: (integer widths per group, integer levels)} of a (decoded) quantized state."""
    out = {}
    for name, entry in state["quantized"].items():
        bits = entry_group_bits(entry)
        levels = unpack_levels(entry_levels_data(entry), bits, numel_of(entry["shape"]),
                               entry["group_size"])
        out[name] = (bits, levels.to(torch.int64))
    return out


def check_stored_levels(name: str, state: dict) -> None:
    """The stored levels decode to the pinned integers, and packing them again gives back the
    stored bytes (the writer's side of the packing order)."""
    decoded = levels_of(state)
    assert digest(decoded) == LEVELS[name], f"{name}: stored levels or packing order changed"
    for key, entry in state["quantized"].items():
        bits, levels = decoded[key]
        head = pack(bits - entry["bits_min"], entry["bits_width"]) if entry["bits_width"] else []
        chunks = [*([head] if len(head) else []),
                  *pack_levels(levels.to(torch.uint8), bits, entry["group_size"])]
        assert torch.equal(torch.cat(chunks), entry["data"]), key


def assert_close_to_stored(live: dict, stored: dict) -> None:
    """A state computed today from float weights against a stored one: same layout and widths;
    a level may differ by one where a weight sits on a rounding boundary (other CPUs round
    ``(w - low) / delta`` with other last bits), and ranges agree to float precision."""
    assert live["quantized"].keys() == stored["quantized"].keys()
    live_levels, stored_levels = levels_of(live), levels_of(stored)
    for key, entry in stored["quantized"].items():
        mine = live["quantized"][key]
        for field in ("shape", "dtype", "scheme", "group_size", "qmax", "offset"):
            assert mine[field] == entry[field], (key, field)
        for field in ("low", "high", "step"):
            assert mine[field] == pytest.approx(entry[field], rel=1e-6, abs=1e-9), (key, field)
        (bits, levels), (sbits, slevels) = live_levels[key], stored_levels[key]
        assert torch.equal(bits, sbits), key
        diff = (levels - slevels).abs()
        assert int(diff.max()) <= 1 and int((diff > 0).sum()) <= max(1, levels.numel() // 100)
    assert live["floats"].keys() == stored["floats"].keys()
    for key, value in stored["floats"].items():
        torch.testing.assert_close(live["floats"][key], value, rtol=1e-6, atol=1e-7)


def check_restored_logits(make_model, artifact: dict) -> torch.Tensor:
    """A zeroed model restored from ``artifact`` gives the logits recorded when the file was
    written (within float tolerance); returns them."""
    model = make_model()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    restore_quantized_state(model, artifact["state"])
    with torch.no_grad():
        out = model.eval()(golden_input())
    expected = torch.tensor(artifact["metrics"]["expected_logits"])
    torch.testing.assert_close(out, expected, rtol=0, atol=ATOL)
    return out


def _raw(path: Path) -> dict:
    return torch.load(io.BytesIO(gzip.decompress(path.read_bytes())), weights_only=True)


def test_golden_v1_artifact_is_pinned_and_rebuilds():
    kind, artifact = read_file(GOLDEN_V1)
    assert kind == "artifact" and artifact["version"] == 1
    assert digest(payload(artifact)) == GOLDEN_V1_PAYLOAD
    check_stored_levels("golden_v1.th", artifact["state"])
    # Outputs recorded when the file was written, and today's quantizer on the same model.
    out = check_restored_logits(golden_model, artifact)
    live = golden_model()
    quantizer = golden_diffq(live)
    assert_close_to_stored(quantizer.get_quantized_state(), artifact["state"])
    with torch.no_grad():
        torch.testing.assert_close(live.eval()(golden_input()), out, rtol=0, atol=ATOL)


def test_a_state_saves_to_the_same_bytes_twice():
    """No time stamps or random ids in a file: the same state gives the same bytes."""
    quantizer = golden_diffq(golden_model())
    assert torch_bytes(quantizer.get_quantized_state(), compress=True) == \
        torch_bytes(quantizer.get_quantized_state(), compress=True)
    assert quantizer.get_quantized_state()["config"]["group_size"] == 4


def test_a_changed_level_byte_fails_the_pins():
    _, artifact = read_file(GOLDEN_V1)
    entry = artifact["state"]["quantized"]["0.weight"]
    data = entry["data"].clone()
    data[entry["bits_nbytes"] + 1] ^= 0x10  # one byte of the stored levels
    entry["data"] = data
    assert digest(payload(artifact)) != GOLDEN_V1_PAYLOAD
    with pytest.raises(AssertionError, match="stored levels or packing order"):
        check_stored_levels("golden_v1.th", artifact["state"])


def test_a_changed_packing_order_fails_the_pins(monkeypatch):
    # Groups sorted by width, widest first, instead of narrowest first (both sides agree, so
    # only the pinned levels can tell).
    monkeypatch.setattr(pack_module, "width_order",
                        lambda bits: torch.argsort(-bits.to(torch.int64), stable=True))
    _, artifact = read_file(GOLDEN_V1)
    with pytest.raises(AssertionError, match="stored levels or packing order"):
        check_stored_levels("golden_v1.th", artifact["state"])


def test_golden_v1_artifact_through_size():
    result = CliRunner().invoke(app, ["size", str(GOLDEN_V1), "--json"])
    assert result.exit_code == 0, result.output
    assert '"kind": "artifact"' in result.stdout


@pytest.mark.parametrize("name", sorted(GOLDEN_V2))
def test_golden_v2_artifact_loads_and_codes_the_same(name):
    make_model, make_quantizer, pinned, mode = GOLDEN_V2[name]
    path = DATA / name
    raw = _raw(path)
    assert raw["version"] == 2
    assert digest(payload(raw)) == pinned
    modes = {s["mode"] for e in raw["state"]["quantized"].values() for s in e["streams"]}
    assert mode in modes, modes  # the coder itself is pinned, not only the packing
    kind, artifact = read_file(path)
    assert kind == "artifact"
    check_stored_levels(name, artifact["state"])
    # Today's encoder gives the very same coded streams for the stored levels...
    coded = encode_state(artifact["state"])
    for key in ("payload", "symbols", "counts"):
        assert torch.equal(coded[key], raw["state"][key]), key
    assert coded["quantized"] == raw["state"]["quantized"]
    # ...today's quantizer gives the same state from the float model, up to rounding ties...
    live = make_model()
    quantizer = make_quantizer(live)
    assert_close_to_stored(quantizer.get_quantized_state(), artifact["state"])
    # ...and today's decoder gives back weights with the outputs recorded when it was written.
    out = check_restored_logits(make_model, artifact)
    with torch.no_grad():
        torch.testing.assert_close(live.eval()(golden_input()), out, rtol=0, atol=ATOL)


def test_golden_learned_grid_file_with_zero_level_decodes_as_written():
    """A learned-grid file from before the mid-rise levels (offset 0) keeps its meaning: the
    same stored levels, the same coded bytes again, and the logits recorded when written."""
    name = "golden_v2_learned0.th"
    raw = _raw(DATA / name)
    assert digest(payload(raw)) == GOLDEN_LEARNED0
    kind, artifact = read_file(DATA / name)
    entries = artifact["state"]["quantized"].values()
    assert {(e["scheme"], e["offset"]) for e in entries} == {("learned", 0)}
    check_stored_levels(name, artifact["state"])
    coded = encode_state(artifact["state"])
    for key in ("payload", "symbols", "counts"):
        assert torch.equal(coded[key], raw["state"][key]), key
    check_restored_logits(golden_model, artifact)
    # Today's quantizer writes the mid-rise levels instead, which decode to other values.
    live = golden_diffq(golden_model(), grid="learned").get_quantized_state()
    assert {e["offset"] for e in live["quantized"].values()} == {1}


def test_golden_channel_grid_file_decodes_as_written():
    """A file on the per-channel min/max grid (no longer trained) keeps its meaning: the same
    stored levels, the same coded bytes again, and the logits recorded when written."""
    name = "golden_v2_channel.th"
    raw = _raw(DATA / name)
    assert digest(payload(raw)) == GOLDEN_CHANNEL
    kind, artifact = read_file(DATA / name)
    assert {e["scheme"] for e in artifact["state"]["quantized"].values()} == {"channel"}
    check_stored_levels(name, artifact["state"])
    coded = encode_state(artifact["state"])
    for key in ("payload", "symbols", "counts"):
        assert torch.equal(coded[key], raw["state"][key]), key
    check_restored_logits(golden_model, artifact)
