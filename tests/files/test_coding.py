"""Entropy coding of states (diffq_cli.files.coding): exact round trips for every width, constant
tensors and one-symbol histograms, damaged streams caught, and the v2 artifact end to end."""

import gzip
import io
from types import SimpleNamespace

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from diffq_cli import restore_quantized_state
from diffq_cli.files.artifact import read_file, save_artifact
from diffq_cli.files.check import check_state_deep
from diffq_cli.files.coding import decode_state, encode_state
from diffq_cli.quant.state import FORMAT, VERSION, build_state


def make_state(shape, group_size, widths, seed=0, peaked=True, constant=None) -> dict:
    """A state of one tensor whose groups have the given widths (cycled), built the library's
    way (``build_state``), levels peaked around the middle of each group's range."""
    numel = 1
    for s in shape:
        numel *= s
    groups = -(-numel // group_size)
    bits = torch.tensor([widths[i % len(widths)] for i in range(groups)], dtype=torch.int64)
    per_value = bits.repeat_interleave(group_size)[:numel]
    top = 2**per_value - 1
    gen = torch.Generator().manual_seed(seed)
    if constant is not None:
        levels = torch.full((numel,), constant, dtype=torch.int64).minimum(top)
    elif peaked:
        noise = torch.randn(numel, generator=gen) * (top.float() / 8 + 0.3)
        levels = (top.float() / 2 + noise).round().clamp(torch.zeros(numel), top.float()).long()
    else:
        levels = (torch.rand(numel, generator=gen) * (top + 1).float()).long().minimum(top)
    enc = {"scheme": "minmax", "levels": levels, "bits": bits,
           "low": torch.tensor(-1.0), "high": torch.tensor(1.0)}
    param = torch.nn.Parameter(torch.zeros(shape))
    qparams = {"w": SimpleNamespace(param=param, group_size=group_size)}
    return build_state("DiffQuantizer", {"group_size": group_size}, {"w": enc}, qparams,
                       {"b": torch.arange(3.0)}, {"n": torch.tensor(7)}, False)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert a["quantized"].keys() == b["quantized"].keys()
    for name, ea in a["quantized"].items():
        eb = b["quantized"][name]
        assert {k for k in ea if k != "data"} == {k for k in eb if k != "data"}
        for key in ea:
            if key == "data":
                assert torch.equal(ea["data"], eb["data"])
            else:
                assert ea[key] == eb[key], key
    for group in ("floats", "buffers"):
        assert all(torch.equal(a[group][k], b[group][k]) for k in a[group])


def round_trip(state):
    coded = encode_state(state)
    back, disk = decode_state(coded, FORMAT, VERSION)
    check_state_deep(back)
    assert_same_state(state, back)
    return coded, disk


@settings(max_examples=60, deadline=None)
@given(widths=st.lists(st.integers(1, 15), min_size=1, max_size=5),
       numel=st.integers(1, 3000), group_size=st.integers(1, 17), seed=st.integers(0, 99),
       peaked=st.booleans())
@example(widths=[1], numel=1000, group_size=8, seed=0, peaked=True)
@example(widths=[15], numel=2000, group_size=8, seed=0, peaked=False)
@example(widths=list(range(1, 16)), numel=2999, group_size=7, seed=1, peaked=True)
def test_round_trip_is_exact_for_every_width(widths, numel, group_size, seed, peaked):
    round_trip(make_state([numel], group_size, widths, seed, peaked))


def test_peaked_levels_code_below_packed_and_uniform_wide_ones_fall_back():
    state = make_state([64, 1000], 8, [3])
    coded, disk = round_trip(state)
    packed = state["quantized"]["w"]["data"].numel()
    assert disk["w"] < 0.8 * packed
    assert [s["mode"] for s in coded["quantized"]["w"]["streams"]] == ["ans"]
    # 14-bit levels spread evenly: a table of thousands of symbols would cost more than it saves.
    wide = make_state([4000], 8, [14], peaked=False)
    coded, disk = round_trip(wide)
    assert [s["mode"] for s in coded["quantized"]["w"]["streams"]] == ["packed"]
    assert disk["w"] == wide["quantized"]["w"]["data"].numel()


def test_constant_tensor_and_one_symbol_histograms():
    # Every level 0 (a constant weight) at one width: a "const" stream, nothing but its table.
    state = make_state([50, 40], 8, [4], constant=0)
    coded, disk = round_trip(state)
    assert [s["mode"] for s in coded["quantized"]["w"]["streams"]] == ["const"]
    assert coded["payload"].numel() == 0 and disk["w"] == 6
    # Mixed widths, each width's levels a single symbol; widths stream with several symbols.
    state = make_state([999], 5, [2, 7, 15], constant=3)
    coded, _ = round_trip(state)
    modes = [s["mode"] for s in coded["quantized"]["w"]["streams"]]
    assert modes[1:] == ["const"] * 3


def _ans_stream(coded):
    return next(s for e in coded["quantized"].values() for s in e["streams"]
                if s["mode"] == "ans")


@pytest.mark.parametrize("damage", ["flip", "truncate", "counts", "crc", "length"])
def test_damaged_stream_is_caught(damage):
    coded = encode_state(make_state([64, 500], 8, [2, 3, 5]))
    stream = _ans_stream(coded)
    d0, d1 = stream["data"]
    if damage == "flip":
        coded["payload"][(d0 + d1) // 2] ^= 0x10
    elif damage == "truncate":
        stream["data"] = [d0, d1 - 4]
    elif damage == "counts":
        t0, t1 = stream["table"]
        coded["counts"][t0] += 1
        coded["counts"][t1 - 1] -= 1
    elif damage == "crc":
        stream["crc"] ^= 1
    else:
        stream["n"] += 1
    with pytest.raises(ValueError, match="damaged|corrupt|CRC|length|table|stream"):
        decode_state(coded, FORMAT, VERSION)


def test_every_flipped_payload_byte_is_caught():
    coded = encode_state(make_state([32, 200], 8, [2, 3, 4, 6]))
    payload = coded["payload"].clone()
    for pos in range(0, payload.numel(), 7):
        coded["payload"] = payload.clone()
        coded["payload"][pos] ^= 0xA5
        with pytest.raises(ValueError):
            decode_state(coded, FORMAT, VERSION)


def test_v2_artifact_end_to_end(tmp_path):
    torch.manual_seed(0)
    from golden import golden_diffq, golden_input, golden_model

    model = golden_model()
    quantizer = golden_diffq(model)
    state = quantizer.get_quantized_state()
    spec = {"name": "mlp", "source": "torch", "num_classes": 3, "in_chans": 1}
    save_artifact(tmp_path / "model.th", state, spec, {}, {}, {})
    raw = gzip.decompress((tmp_path / "model.th").read_bytes())
    stored = torch.load(io.BytesIO(raw), weights_only=True)  # plain types and tensors only
    assert stored["version"] == 2 and stored["state"]["payload"].dtype == torch.uint8
    kind, artifact = read_file(tmp_path / "model.th")
    assert kind == "artifact"
    assert_same_state(state, artifact["state"])
    fresh = golden_model()
    restore_quantized_state(fresh, artifact["state"])
    with torch.no_grad():
        assert torch.equal(fresh.eval()(golden_input()), model.eval()(golden_input()))


def test_size_reports_bound_and_disk_bytes_per_layer(tmp_path):
    import json

    from typer.testing import CliRunner

    from diffq_cli.cli.app import app
    from diffq_cli.quant.summary import entropy_bits

    state = make_state([64, 500], 8, [2, 3, 5])
    save_artifact(tmp_path / "model.th", state, {"name": "m", "num_classes": 2, "in_chans": 1},
                  {}, {}, {})
    result = CliRunner().invoke(app, ["size", str(tmp_path / "model.th"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["version"] == 2
    layer = next(r for r in out["layers"] if r["name"] == "w")
    coded, disk = round_trip(state)
    assert layer["disk_bytes"] == disk["w"]
    assert layer["bound_mb"] == pytest.approx(entropy_bits(state["quantized"]["w"]) / 8 / 2**20)
    # The coded bytes sit within 2% (+ the tables) of the bound, far below the packed size.
    assert disk["w"] * 8 <= 1.02 * entropy_bits(state["quantized"]["w"]) + 8 * 64
    assert out["bound_ratio"] == pytest.approx(out["file_bytes"] / (out["bound_mb"] * 2**20))
    table = CliRunner().invoke(app, ["size", str(tmp_path / "model.th")])
    assert "order-0 entropy bound" in table.stdout and "bytes on disk" in table.stdout


def test_entropy_bits_of_a_known_histogram():
    from diffq_cli.quant.summary import entropy_bits

    # One width (4 bits), levels half 0 and half 15: exactly 1 bit per value, widths free.
    levels = torch.tensor([0, 15] * 500)
    enc = {"scheme": "minmax", "levels": levels, "bits": torch.full((125,), 4),
           "low": torch.tensor(0.0), "high": torch.tensor(1.0)}
    param = torch.nn.Parameter(torch.zeros(1000))
    state = build_state("X", {}, {"w": enc}, {"w": SimpleNamespace(param=param, group_size=8)},
                        {}, {}, False)
    assert entropy_bits(state["quantized"]["w"]) == pytest.approx(1000 + 72)


@settings(max_examples=80, deadline=None)
@given(width=st.integers(1, 15), n=st.integers(0, 300), seed=st.integers(0, 99))
def test_numpy_packing_matches_the_library_byte_for_byte(width, n, seed):
    import numpy as np

    from diffq_cli.files import nppack
    from diffq_cli.quant.pack import pack, packed_nbytes

    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**width, n).astype(np.uint8 if width <= 8 else np.uint16)
    out = np.empty(packed_nbytes(n, width), dtype=np.uint8)
    nppack.pack_into(out, values, width)
    assert np.array_equal(out, pack(torch.from_numpy(values.astype(np.int32)), width).numpy())
    assert np.array_equal(nppack.unpack(out, width, n), values)
