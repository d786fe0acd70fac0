"""Damaged files: every flipped byte of a real artifact, and content that decompresses but is
wrong, give exit 2 with exactly one line on stderr from ``size``, ``eval`` and ``export``."""

import gzip
import io
import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from diffq_cli import DiffQuantizer
from diffq_cli.cli.app import app
from diffq_cli.errors import InputError
from diffq_cli.fileio import torch_bytes
from diffq_cli.files.artifact import read_file, save_artifact

# gzip header bytes that no reader checks (mtime, extra flags, OS): a flip there is harmless.
UNCHECKED_HEADER = range(4, 10)


def tiny_artifact(path, group_size=4, grid="minmax"):
    """A real artifact of a two-layer model with several bit widths per tensor."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.ReLU(), torch.nn.Linear(24, 5))
    quantizer = DiffQuantizer(model, min_size=0, group_size=group_size, grid=grid)
    quantizer.no_optimizer()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_diffq"):
                p.copy_(torch.linspace(-6, 6, p.numel()).view(p.shape))
    spec = {"name": "mlp", "source": "torch", "num_classes": 5, "in_chans": 1, "input_size": 4}
    save_artifact(path, quantizer.get_quantized_state(), spec, {"dataset": "digits"}, {}, {})
    return path


# Training no longer offers the per-channel min/max grid; its files still load: the golden one.
GOLDEN_CHANNEL = Path(__file__).parent / "golden" / "golden_v2_channel.th"


def grid_artifact(path, grid):
    """``tiny_artifact`` on ``grid``, or for ``channel`` a copy of the golden file on it."""
    if grid == "channel":
        path.write_bytes(GOLDEN_CHANNEL.read_bytes())
        return path
    return tiny_artifact(path, grid=grid)


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_exit_2(result, where):
    assert result.exit_code == 2, (where, result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (where, result.stderr)


@pytest.mark.parametrize("grid", ["minmax", "learned", "channel"])
def test_every_flipped_byte_of_the_gzip_stream_is_caught(tmp_path, grid):
    good = grid_artifact(tmp_path / "model.th", grid).read_bytes()
    clean = run("size", tmp_path / "model.th", "--json")
    assert clean.exit_code == 0
    bad = tmp_path / "bad.th"
    # Deterministic: about 150 positions spread over the whole file, plus the gzip trailer
    # (CRC32 and length) and the first bytes after the header, where the deflate tables live.
    step = max(1, len(good) // 150)
    positions = sorted(set(range(0, len(good), step)) | set(range(len(good) - 8, len(good)))
                       | set(range(10, 20)))
    caught = 0
    for pos in positions:
        data = bytearray(good)
        data[pos] ^= 0xFF
        bad.write_bytes(bytes(data))
        result = run("size", bad, "--json")
        if pos in UNCHECKED_HEADER and result.exit_code == 0:
            assert result.stdout.replace("bad.th", "model.th") == clean.stdout
            continue
        assert_one_line_exit_2(result, pos)
        caught += 1
    assert caught >= len(positions) - len(UNCHECKED_HEADER)


@pytest.mark.parametrize("command", ["size", "eval", "export"])
def test_flipped_deflate_bytes_and_truncation_through_every_command(tmp_path, command):
    good = tiny_artifact(tmp_path / "model.th").read_bytes()
    bad = tmp_path / "bad.th"
    extra = ["-o", tmp_path / "out.pt2"] if command == "export" else []
    for cut in (len(good) // 3, len(good) // 2, len(good) - 3):
        data = bytearray(good)
        data[cut] ^= 0x55
        bad.write_bytes(bytes(data))
        assert_one_line_exit_2(run(command, bad, *extra), (command, "flip", cut))
        bad.write_bytes(good[:cut])
        assert_one_line_exit_2(run(command, bad, *extra), (command, "truncate", cut))
    assert not (tmp_path / "out.pt2").exists()


def _state(tmp_path):
    """A version-1 artifact (bit-packed state inside) of the tiny model, as a dict."""
    tiny_artifact(tmp_path / "model.th")
    obj = read_file(tmp_path / "model.th")[1]
    obj.pop("disk_bytes")
    obj["version"] = 1
    return obj


def _coded(tmp_path):
    """The version-2 artifact of the tiny model as stored (coded state inside)."""
    raw = gzip.decompress(tiny_artifact(tmp_path / "model.th").read_bytes())
    return torch.load(io.BytesIO(raw), weights_only=True)


def _stream(obj, index=0):
    return next(iter(obj["state"]["quantized"].values()))["streams"][index]


def _first_entry(obj):
    return next(iter(obj["state"]["quantized"].values()))


def _drop(key):
    def edit(obj):
        del _first_entry(obj)[key]
    return edit


def _set(key, value):
    def edit(obj):
        _first_entry(obj)[key] = value
    return edit


def _short_data(obj):
    entry = _first_entry(obj)
    entry["data"] = entry["data"][: entry["data"].numel() // 2].clone()


def _bits_too_wide(obj):
    entry = _first_entry(obj)
    entry["bits_min"] = 15  # every group's width then exceeds 15


CORRUPTIONS = {
    "no state": lambda obj: obj.pop("state"),
    "state not a dict": lambda obj: obj.update(state=[1, 2]),
    "no quantized": lambda obj: obj["state"].pop("quantized"),
    "floats not tensors": lambda obj: obj["state"].update(floats={"0.bias": 3}),
    "no shape": _drop("shape"),
    "no data": _drop("data"),
    "shape of strings": _set("shape", ["a", 2]),
    "negative shape": _set("shape", [-4, 4]),
    "group size zero": _set("group_size", 0),
    "group size text": _set("group_size", "8"),
    "unknown dtype": _set("dtype", "complex_banana"),
    "unknown scheme": _set("scheme", "zip"),
    "low not a number": _set("low", "x"),
    "data float tensor": _set("data", torch.zeros(10)),
    "bits_nbytes too big": _set("bits_nbytes", 10**6),
    "bits_width too big": _set("bits_width", 9),
    "levels data too short": _short_data,
    "widths above 15": _bits_too_wide,
    "no model spec": lambda obj: obj.pop("model"),
    "model spec without name": lambda obj: obj["model"].pop("name"),
}


def _assert_refused(tmp_path, obj, name):
    """``obj`` saved as a valid gzip: the loader raises InputError, ``size`` exits 2, one line."""
    bad = tmp_path / "bad.th"
    bad.write_bytes(torch_bytes(obj, compress=True))
    with pytest.raises(InputError):
        read_file(bad)
    assert_one_line_exit_2(run("size", bad), name)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_content_that_decompresses_but_is_wrong(tmp_path, name):
    obj = _state(tmp_path)
    CORRUPTIONS[name](obj)
    _assert_refused(tmp_path, obj, name)


V2_CORRUPTIONS = {
    "not coded": lambda obj: obj["state"].update(coding="zip"),
    "no payload": lambda obj: obj["state"].pop("payload"),
    "payload wrong dtype": lambda obj: obj["state"].update(payload=torch.zeros(3)),
    "entry without streams": lambda obj: next(iter(obj["state"]["quantized"].values())).pop(
        "streams"),
    "unknown mode": lambda obj: _stream(obj).update(mode="lz"),
    "span outside payload": lambda obj: _stream(obj).update(data=[0, 10**9]),
    "span of text": lambda obj: _stream(obj).update(data=["a", 3]),
    "wrong count": lambda obj: _stream(obj, 1).update(n=_stream(obj, 1)["n"] + 1),
    "crc": lambda obj: _stream(obj, 1).update(crc=_stream(obj, 1)["crc"] ^ 1),
    "missing stream": lambda obj: next(iter(obj["state"]["quantized"].values()))[
        "streams"].pop(),
    "payload zeroed": lambda obj: obj["state"]["payload"].zero_(),
}


@pytest.mark.parametrize("name", sorted(V2_CORRUPTIONS))
def test_v2_content_that_decompresses_but_is_wrong(tmp_path, name):
    obj = _coded(tmp_path)
    assert obj["version"] == 2
    V2_CORRUPTIONS[name](obj)
    _assert_refused(tmp_path, obj, name)


def test_every_flipped_byte_of_the_golden_v1_file_is_caught(tmp_path):
    good = (Path(__file__).parent / "golden" / "golden_v1.th").read_bytes()
    bad = tmp_path / "bad.th"
    for pos in range(len(good)):
        if pos in UNCHECKED_HEADER:
            continue
        data = bytearray(good)
        data[pos] ^= 0xFF
        bad.write_bytes(bytes(data))
        with pytest.raises(InputError):
            read_file(bad)


@pytest.mark.parametrize("command", ["eval", "export"])
def test_wrong_content_through_eval_and_export(tmp_path, command):
    obj = _state(tmp_path)
    _short_data(obj)
    bad = tmp_path / "bad.th"
    bad.write_bytes(gzip.compress(torch_bytes(obj)))
    extra = ["-o", tmp_path / "out.pt2"] if command == "export" else []
    assert_one_line_exit_2(run(command, bad, *extra), command)


@pytest.mark.parametrize("grid", ["minmax", "channel", "learned"])
def test_size_shows_the_grid(tmp_path, grid):
    path = grid_artifact(tmp_path / "m.th", grid)
    doc = json.loads(run("size", path, "--json").stdout)
    assert doc["grid"] == grid
    table = run("size", path).stdout
    assert re.search(rf"grid\s*│\s*{grid}", table), table
