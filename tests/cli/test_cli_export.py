"""``diffq eval`` and ``diffq export`` through CliRunner: exit 0 ok, 1 gate failed, 2 bad input."""

import json
import sys

import pytest
from artifact_factory import make_artifact
from cli_helpers import one_error_line, run

from diffq_cli.files import formats


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model.th"
    make_artifact(path, metrics={"accuracy": 11.0})
    return path


def test_eval_json(artifact):
    result = run("eval", artifact, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # exactly one JSON document on stdout
    assert doc["dataset"] == "digits" and doc["samples"] == 359
    assert doc["recorded_accuracy"] == 11.0  # what the file says, not what eval measured
    # Independent rebuild: the state restored into a fresh model, scored by a plain loop.
    import torch

    from diffq_cli import restore_quantized_state
    from diffq_cli.config.schema import DataConfig
    from diffq_cli.data.loaders import build_loaders
    from diffq_cli.files.artifact import read_file
    from diffq_cli.models.factory import create_model
    from diffq_cli.run.evaluate import accuracy

    blob = read_file(artifact)[1]
    spec = blob["model"]
    model = create_model(spec["name"], num_classes=spec["num_classes"],
                         in_chans=spec["in_chans"], input_size=spec["input_size"])
    restore_quantized_state(model, blob["state"])
    _, val, _ = build_loaders(DataConfig(dataset="digits", input_size=spec["input_size"] or 16,
                                       train_subset=1))
    with torch.no_grad():
        assert doc["accuracy"] == accuracy(model, val)


def test_eval_table_and_min_acc_gate(artifact):
    result = run("eval", artifact)
    assert result.exit_code == 0 and "accuracy" in result.stdout
    measured = json.loads(run("eval", artifact, "--json").stdout)["accuracy"]
    assert measured < 100  # a random model: the gate just above it must fail
    result = run("eval", artifact, "--min-acc", f"{measured + 0.01:.4f}")
    assert result.exit_code == 1
    assert "min-acc" in one_error_line(result)
    assert run("eval", artifact, "--min-acc", f"{measured - 0.01:.4f}").exit_code == 0
    result = run("eval", artifact, "--min-acc", "101")
    assert result.exit_code == 2 and "between 0 and 100" in one_error_line(result)


def test_eval_bad_input(artifact, tmp_path):
    result = run("eval", tmp_path / "missing.th")
    assert result.exit_code == 2 and "no such file" in one_error_line(result)
    result = run("eval", artifact, "--dataset", "cifar10")
    assert result.exit_code == 2 and "data-dir" in one_error_line(result)


def test_export_compact_json(artifact, tmp_path):
    out = tmp_path / "model.pt2"
    result = run("export", artifact, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["format"] == "compact" and doc["ok"] and doc["path"] == str(out)
    assert out.stat().st_size == doc["bytes"] and doc["max_abs_diff"] <= 1e-4


def test_export_tolerance_gate(artifact, tmp_path, monkeypatch):
    out = tmp_path / "m.safetensors"
    result = run("export", artifact, "-o", out, "--format", "safetensors", "--dtype", "fp16")
    assert result.exit_code == 0, result.output  # checked against the fp16-rounded weights
    writer, runner = formats.WRITERS["pt2"]
    monkeypatch.setitem(formats.WRITERS, "pt2", (writer, lambda *args: runner(*args) + 1e-3))
    result = run("export", artifact, "-o", tmp_path / "m.pt2", "--format", "pt2")
    assert result.exit_code == 1
    assert "atol" in one_error_line(result)
    result = run("export", artifact, "-o", tmp_path / "m.pt2", "--format", "pt2", "--atol", "0.01")
    assert result.exit_code == 0


def test_export_bad_input(artifact, tmp_path, monkeypatch):
    result = run("export", artifact, "-o", tmp_path / "m.x", "--format", "tflite")
    assert result.exit_code == 2 and "compact, pt2" in one_error_line(result)
    corrupt = tmp_path / "corrupt.th"
    corrupt.write_bytes(artifact.read_bytes()[:1000])
    result = run("export", corrupt, "-o", tmp_path / "m.pt2")
    assert result.exit_code == 2
    one_error_line(result)
    monkeypatch.setitem(sys.modules, "onnx", None)
    result = run("export", artifact, "-o", tmp_path / "m.onnx", "--format", "onnx")
    assert result.exit_code == 2
    assert "pip install 'diffq-cli[onnx]'" in one_error_line(result)


def test_export_int_weights(artifact, tmp_path):
    out = tmp_path / "model.pt2"  # a .pt2 output with --weights int: the pt2 program, not compact
    result = run("export", artifact, "-o", out, "--weights", "int", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["format"] == "pt2" and doc["weights"] == "int" and doc["ok"]
    assert set(doc["int"]) == {"tensors", "near_exact", "float"}
    result = run("export", artifact, "-o", out, "--weights", "int")
    assert result.exit_code == 0 and "integer weights" in result.stdout
    result = run("export", artifact, "-o", tmp_path / "m.safetensors", "--weights", "int")
    assert result.exit_code == 2 and "pt2 or onnx" in one_error_line(result)
    result = run("export", artifact, "-o", out, "--weights", "int4")
    assert result.exit_code == 2 and "float, int" in one_error_line(result)
