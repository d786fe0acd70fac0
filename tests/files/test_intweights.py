"""Integer-weight exports (``--weights int``): the integers and scales give the quantized
weights (exactly on the learned and lsq grids and on single-width min/max rows, to float32
ulps on mixed-width rows, else the tensor stays float); the files are a fraction of the float
ones and match the quantized model."""

import json
import subprocess
import sys

import pytest
import torch
from artifact_factory import make_artifact
from test_export import FRESH

from diffq_cli import LSQ, UniformQuantizer
from diffq_cli.errors import InputError
from diffq_cli.files.artifact import read_file, rebuild_model
from diffq_cli.files.export import export_artifact
from diffq_cli.files.intweights import IntModel, int_weight, int_weights
from diffq_cli.quant.state import dequantize_entry

ARTIFACTS = {  # name: (quantizer options, integer dtype expected, exact expected)
    "learned": ({"grid": "learned", "max_bits": 8}, "int8", True),
    "minmax-4bit": ({"min_bits": 4, "max_bits": 4, "init_bits": 4}, "uint8", True),
    "minmax-2to4": ({"min_bits": 2, "max_bits": 4, "init_bits": 3}, "uint8", False),
}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("int")
    return {name: make_artifact(root / f"{name}.th", **opts)["path"]
            for name, (opts, _, _) in ARTIFACTS.items()}


def _restored(path):
    _, obj = read_file(path)
    return obj, rebuild_model(obj)


@pytest.mark.parametrize("name", ARTIFACTS)
def test_integers_give_the_quantized_weights(artifacts, name):
    obj, model = _restored(artifacts[name])
    _, dtype, exact = ARTIFACTS[name]
    mapped = int_weights(obj["state"])
    assert set(mapped) == set(obj["state"]["quantized"])  # every tensor has an integer form
    int_model = IntModel(model, obj["state"], mapped).eval()
    weights = int_model.weights()
    for pname, w in mapped.items():
        assert str(w["q"].dtype) == f"torch.{dtype}" and w["exact"] == exact
        want = model.get_parameter(pname)
        if exact:
            assert torch.equal(weights[pname], want), pname
        else:
            torch.testing.assert_close(weights[pname], want, rtol=2e-7, atol=1e-7)
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(int_model(x), model(x), rtol=0, atol=1e-5)


def test_channel_grid_file_integers_give_its_weights():
    """A file on the per-channel min/max grid (no longer trained: tests/golden.py's
    write_golden_channel) keeps its integer form, per row ``low + q * step``: its rows mix
    widths (2 to 8 bits), so on each row's common grid, near-exact, uint8 or int16."""
    from pathlib import Path

    from golden import golden_input, golden_model

    from diffq_cli import restore_quantized_state

    _, obj = read_file(Path(__file__).parent / "golden" / "golden_v2_channel.th")
    state = obj["state"]
    assert {e["scheme"] for e in state["quantized"].values()} == {"channel"}
    model = golden_model()
    restore_quantized_state(model, state)
    model.eval()
    mapped = int_weights(state)
    assert set(mapped) == set(state["quantized"])
    assert {str(w["q"].dtype) for w in mapped.values()} == {"torch.uint8", "torch.int16"}
    int_model = IntModel(model, state, mapped).eval()
    weights = int_model.weights()
    for pname, w in mapped.items():
        assert w["offset"] is not None and not w["exact"]
        torch.testing.assert_close(weights[pname], model.get_parameter(pname), rtol=2e-7,
                                   atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(int_model(golden_input()), model(golden_input()), rtol=0,
                                   atol=1e-5)


def test_many_widths_in_a_row_stay_float(tmp_path):
    path = make_artifact(tmp_path / "model.th")["path"]  # widths spread over 2 to 8 bits
    obj, _ = _restored(path)
    assert int_weights(obj["state"]) == {}  # lcm(3, 7, 15, 31, ...) > 32767: no integer form
    result = export_artifact(path, tmp_path / "m.pt2", "pt2", weights="int")
    assert result["ok"] and result["max_abs_diff"] == 0
    floats = len(obj["state"]["quantized"])
    assert result["int"] == {"tensors": {}, "near_exact": 0, "float": floats}


def test_lsq_is_exact_int8():
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(40, 30))
    quantizer = LSQ(layer, min_size=0, bits=4)
    quantizer.no_optimizer()
    state = quantizer.get_quantized_state()
    entry = state["quantized"]["0.weight"]
    w = int_weight(entry)
    assert w["q"].dtype == torch.int8 and w["offset"] is None
    assert torch.equal(w["q"].float() * w["scale"][:, None], dequantize_entry(entry))


@pytest.mark.parametrize("bits,dtype", [(2, torch.int8), (7, torch.int8), (8, torch.int16)])
def test_learned_mid_rise_is_exact_on_int8_up_to_7_bits(bits, dtype):
    """(2q + 1) alpha / 2**b needs one bit more than the width: int16 from 8 bits on."""
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(40, 30))
    state = UniformQuantizer(layer, min_size=0, bits=bits, grid="learned").get_quantized_state()
    entry = state["quantized"]["0.weight"]
    w = int_weight(entry)
    assert w["q"].dtype == dtype and w["exact"]
    assert torch.equal(w["q"].float() * w["scale"][:, None], dequantize_entry(entry))


def test_learned_file_with_zero_level_stays_exact_int8():
    from pathlib import Path

    path = Path(__file__).parent / "golden" / "golden_v2_learned0.th"
    _, obj = read_file(path)
    for entry in obj["state"]["quantized"].values():
        assert entry["offset"] == 0
        w = int_weight(entry)
        assert w["q"].dtype == torch.int8 and w["exact"]
        want = dequantize_entry(entry).reshape(w["q"].shape[0], -1)
        got = w["q"].float().reshape(want.shape) * w["scale"][:, None]
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["learned", "minmax-4bit"])
def test_pt2_int_program_is_exact_and_small(artifacts, name, tmp_path):
    path = artifacts[name]
    result = export_artifact(path, tmp_path / "m.pt2", weights="int")  # .pt2 + int: pt2
    float_file = export_artifact(path, tmp_path / "f.pt2", "pt2")
    assert result["format"] == "pt2" and result["weights"] == "int"
    assert result["ok"] and result["max_abs_diff"] <= 1e-5
    # test_resnet is 0.4M weights: the graph (~0.3 MB) is a large part of the int file here.
    assert result["bytes"] < 0.45 * float_file["bytes"]
    _, model = _restored(path)
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))  # another batch
    with open(result["path"], "rb") as f, torch.no_grad():
        program = torch.export.load(f).module()
        torch.testing.assert_close(program(x), model(x), rtol=0, atol=1e-5)
        buffers = dict(program.named_buffers())
    assert any(b.dtype in (torch.int8, torch.uint8) for b in buffers.values())
    # And in a fresh interpreter where diffq_cli cannot be imported.
    with torch.no_grad():
        torch.save({"x": x, "expected": model(x)}, tmp_path / "ref.pt")
    files = json.dumps([["pt2", result["path"]]])
    proc = subprocess.run([sys.executable, "-I", "-c", FRESH, str(tmp_path / "ref.pt"), files],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["pt2"] <= 1e-5


@pytest.mark.parametrize("name", ["learned", "minmax-2to4"])
@pytest.mark.parametrize("weights", ["int", "qdq"])
def test_onnx_int_weights_are_small_and_in_the_form_asked(artifacts, name, weights, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    path = artifacts[name]
    result = export_artifact(path, tmp_path / "m.onnx", weights=weights)
    float_file = export_artifact(path, tmp_path / "f.onnx")
    assert result["format"] == "onnx" and result["ok"] and result["max_abs_diff"] <= 1e-4
    assert result["int"]["float"] == 0 and result["weights"] == weights
    assert result["bytes"] < 0.35 * float_file["bytes"]
    graph = onnx.load(result["path"]).graph
    ops = [n.op_type for n in graph.node]
    ints = sum(result["int"]["tensors"].values())
    if weights == "qdq":  # the conv weights: the form int8 runtimes recognise
        assert ops.count("DequantizeLinear") == ints
    else:  # integers cast and scaled: onnxruntime folds them into float weights at load
        assert "DequantizeLinear" not in ops and ops.count("Cast") == ints
    kinds = {i.data_type for i in graph.initializer if i.name.endswith("__q")}
    assert kinds <= {onnx.TensorProto.INT8, onnx.TensorProto.UINT8} and kinds


def test_qdq_is_for_onnx_only(artifacts, tmp_path):
    with pytest.raises(InputError, match="applies to --format onnx"):
        export_artifact(artifacts["learned"], tmp_path / "m.pt2", "pt2", weights="qdq")


def test_int_weights_bad_inputs(artifacts, tmp_path):
    path = artifacts["learned"]
    with pytest.raises(InputError, match="pt2 or onnx"):
        export_artifact(path, tmp_path / "m.safetensors", weights="int")
    with pytest.raises(InputError, match="pt2 or onnx"):
        export_artifact(path, tmp_path / "m.pt2", "compact", weights="int")
    with pytest.raises(InputError, match="float, int, qdq"):
        export_artifact(path, tmp_path / "m.pt2", weights="int8")


def test_a_transformers_linear_weights_are_integers_in_onnx_too(tmp_path):
    # MatMul weights: Cast + Mul, never DequantizeLinear (onnxruntime would run that MatMul on
    # dynamically quantized activations), so the file is small and still exact.
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    path = make_artifact(tmp_path / "vit.th", name="test_vit", grid="learned", max_bits=8)["path"]
    for weights in ("int", "qdq"):
        result = export_artifact(path, tmp_path / f"{weights}.onnx", weights=weights)
        # 25 weights are integers; pos_embed stays float (the exporter adds it to the class
        # token into one constant that only an Add reads).
        assert result["ok"] and result["int"]["float"] == 1 and result["int"]["tensors"]
        graph = onnx.load(result["path"]).graph
        readers = {n.input[1] for n in graph.node if n.op_type == "MatMul"}
        casts = {n.output[0] for n in graph.node if n.op_type == "Cast"}
        scaled = {n.output[0] for n in graph.node
                  if n.op_type == "Mul" and n.input[0] in casts}
        assert readers & scaled  # some linear layer reads a cast-and-scaled integer weight
        assert not any(n.op_type == "DequantizeLinear" and n.output[0] in readers
                       for n in graph.node)
