"""Exports: every format loads in a fresh process without diffq_cli and matches the quantized
model; the compact file stays near the true size; bad inputs are one-line InputErrors."""

import gzip
import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from artifact_factory import make_artifact
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from diffq_cli import LSQ, DiffQuantizer, UniformQuantizer
from diffq_cli.errors import InputError
from diffq_cli.files import formats
from diffq_cli.files.artifact import read_file, rebuild_model
from diffq_cli.files.compact import CompactModel, _unpack
from diffq_cli.files.export import FORMATS, export_artifact
from diffq_cli.quant.pack import pack, unpack
from diffq_cli.quant.state import restore

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))
GRAPH_BYTES = 384 * 1024  # the program (graph JSON, ~700 bytes a node) and zip records

# Runs in a fresh interpreter (-I: no PYTHONPATH, no user site, no cwd on sys.path) where
# importing diffq_cli fails, the way a deployment host without diffq sees the files.
FRESH = r"""
import json, sys
sys.modules["diffq_cli"] = None
try:
    import diffq_cli
    raise SystemExit("diffq_cli is importable")
except ImportError:
    pass
import torch
ref = torch.load(sys.argv[1])
x, expected = ref["x"], ref["expected"]
report = {}
for fmt, path in json.loads(sys.argv[2]):
    if fmt in ("compact", "pt2"):
        out = torch.export.load(path).module()(x)
    elif fmt == "torchscript":
        out = torch.jit.load(path)(x)
    elif fmt == "safetensors":
        import timm
        from safetensors import safe_open
        from safetensors.torch import load_file
        with safe_open(path, framework="pt") as f:
            spec = json.loads(f.metadata()["model"])
        model = timm.create_model(spec["name"], num_classes=spec["num_classes"],
                                  in_chans=spec["in_chans"])
        model.load_state_dict(load_file(path))
        out = model.eval()(x)
    elif fmt == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        out = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    report[fmt] = float((out - expected).abs().max())
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp("export") / "model.th")


@pytest.fixture(scope="module")
def exported(artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("files")
    formats = [f for f in FORMATS if f != "onnx" or HAS_ONNX]
    return {fmt: export_artifact(artifact["path"], out, fmt=fmt) for fmt in formats}


def test_every_format_runs_without_diffq_cli(artifact, exported, tmp_path):
    _, obj = read_file(artifact["path"])
    # A batch of 3: the files were exported with 8 samples, so this checks the dynamic batch.
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = rebuild_model(obj)(x)
    torch.save({"x": x, "expected": expected}, tmp_path / "ref.pt")
    files = json.dumps([[fmt, r["path"]] for fmt, r in exported.items()])
    proc = subprocess.run([sys.executable, "-I", "-c", FRESH, str(tmp_path / "ref.pt"), files],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    diffs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(diffs) == set(exported)
    for fmt, diff in diffs.items():
        assert diff < 1e-4, (fmt, diff)


def test_results_report_the_check(exported):
    for fmt, result in exported.items():
        assert result["ok"] and result["max_abs_diff"] <= result["atol"] == 1e-4, fmt
        assert result["dtype"] == "fp32" and result["dtype_diff"] is None
        assert result["format"] == fmt and result["bytes"] > 0 and result["true_mb"] > 0


def test_compact_keeps_weights_packed(artifact, exported):
    true_bytes = artifact["true_mb"] * 2**20
    assert exported["compact"]["bytes"] <= 1.2 * true_bytes + GRAPH_BYTES
    assert exported["compact"]["bytes"] < exported["pt2"]["bytes"] / 2


def test_default_output_next_to_the_artifact(artifact, tmp_path):
    src = tmp_path / "model.th"
    src.write_bytes(artifact["path"].read_bytes())
    result = export_artifact(src, fmt="safetensors")
    assert result["path"] == str(tmp_path / "model.safetensors") and result["ok"]


@pytest.mark.parametrize("dtype, wanted", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_safetensors_half_dtypes(artifact, tmp_path, dtype, wanted):
    from safetensors.torch import load_file

    result = export_artifact(artifact["path"], tmp_path / "m.safetensors", "safetensors",
                             dtype=dtype)
    assert load_file(result["path"])["fc.weight"].dtype == wanted
    # Checked against the quantized weights rounded to dtype (exact); the rounding is reported.
    assert result["ok"] and result["max_abs_diff"] == 0.0 and result["dtype"] == dtype
    assert 0 < result["dtype_diff"] < 1


def test_a_file_that_drifts_fails_the_check(artifact, tmp_path, monkeypatch):
    writer, runner = formats.WRITERS["pt2"]
    monkeypatch.setitem(formats.WRITERS, "pt2", (writer, lambda *args: runner(*args) + 1e-3))
    result = export_artifact(artifact["path"], tmp_path / "m.pt2", "pt2")
    assert not result["ok"] and result["max_abs_diff"] == pytest.approx(1e-3, rel=0.01)
    assert export_artifact(artifact["path"], tmp_path / "m.pt2", "pt2", atol=2e-3)["ok"]


def test_bad_inputs(artifact, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        export_artifact(tmp_path / "missing.th", tmp_path / "o.pt2")
    junk = tmp_path / "junk.th"
    junk.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(InputError):
        export_artifact(junk, tmp_path / "o.pt2")
    truncated = tmp_path / "truncated.th"
    truncated.write_bytes(artifact["path"].read_bytes()[:2000])
    with pytest.raises(InputError, match="truncated|corrupt"):
        export_artifact(truncated, tmp_path / "o.pt2")
    with pytest.raises(InputError, match="compact, pt2, torchscript, safetensors, onnx"):
        export_artifact(artifact["path"], tmp_path / "o.tflite", fmt="tflite")
    with pytest.raises(InputError, match="safetensors only"):
        export_artifact(artifact["path"], tmp_path / "o.pt2", fmt="pt2", dtype="fp16")
    with pytest.raises(InputError, match="overwrite"):
        export_artifact(artifact["path"], artifact["path"], fmt="pt2")
    state_file = tmp_path / "state.th"
    _, obj = read_file(artifact["path"])
    torch.save(obj["state"], state_file)
    with pytest.raises(InputError, match="not an artifact"):
        export_artifact(state_file, tmp_path / "o.pt2")


def test_onnx_without_the_extra(artifact, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(InputError) as info:
        export_artifact(artifact["path"], tmp_path / "m.onnx", fmt="onnx")
    assert str(info.value) == "ONNX export needs the onnx extra: pip install 'diffq-cli[onnx]'"


def test_corrupt_gzip_is_one_line(tmp_path):
    bad = tmp_path / "bad.th"
    bad.write_bytes(gzip.compress(b"hello")[:-6])
    with pytest.raises(InputError) as info:
        export_artifact(bad, tmp_path / "o.pt2")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- CompactModel
class Tied(nn.Module):
    """Conv + two heads sharing one weight (a tied Parameter is quantized once)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.a = nn.Linear(6 * 36, 30)
        self.b = nn.Linear(6 * 36, 30)
        self.b.weight = self.a.weight

    def forward(self, x):
        h = self.conv(x).flatten(1)
        return self.a(h) + self.b(h).flip(1)


QUANTIZERS = {
    "diffq-tail": lambda m: DiffQuantizer(m, min_size=0, group_size=5, max_bits=15),
    "diffq-tensor": lambda m: DiffQuantizer(m, min_size=0, group_size=0),
    "diffq-unbound": lambda m: DiffQuantizer(m, min_size=0, group_size=8, detect_bound=False),
    "uniform-fractional": lambda m: UniformQuantizer(m, min_size=0, bits=3.5),
    "lsq": lambda m: LSQ(m, min_size=0, bits=4),
    "lsq-one-signed": lambda m: LSQ(_one_signed(m), min_size=0, bits=2),
}


def _one_signed(model):
    """``model`` with one all-positive and one all-negative weight (LSQ's one-signed grids)."""
    with torch.no_grad():
        model.a.weight.abs_()
        model.conv.weight.copy_(-model.conv.weight.abs())
    return model


@pytest.mark.parametrize("kind", QUANTIZERS)
def test_compact_model_matches_restore(kind):
    torch.manual_seed(0)
    model = Tied()
    quantizer = QUANTIZERS[kind](model)
    quantizer.no_optimizer()
    with torch.no_grad():  # DiffQ: widths from 2 to 15
        for name, p in model.named_parameters():
            if isinstance(quantizer, DiffQuantizer) and name.endswith("_diffq"):
                p.copy_(torch.linspace(-8, 8, p.numel())[torch.randperm(p.numel())])
    state = quantizer.get_quantized_state()
    quantizer.detach()
    plain = Tied()
    restore(plain, state)
    compact = CompactModel(plain, state).eval()
    assert not any(n.endswith(("a.weight", "conv.weight")) for n, _ in compact.named_parameters())
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), plain.eval()(x), rtol=0, atol=1e-6)
        weights = compact.weights()
    assert torch.equal(weights["a.weight"], weights["b.weight"])
    for name in state["quantized"]:
        torch.testing.assert_close(weights[name], plain.get_parameter(name),
                                   rtol=0, atol=0)  # bit for bit the reference decode


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 15), n=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_graph_unpack_matches_unpack(width, n, seed):
    values = torch.randint(0, 2**width, (n,), generator=torch.Generator().manual_seed(seed))
    packed = pack(values, width)
    got, want = _unpack(packed, width, n), unpack(packed, width, n)
    assert got.dtype == want.dtype and torch.equal(got, want)
