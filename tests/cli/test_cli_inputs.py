"""Bad input through the CLI: exit 2 with one line, before any work, nothing left behind."""

import gzip
import io
import json
import os
import struct

import numpy as np
import pytest
import torch
from artifact_factory import make_artifact
from cli_helpers import one_error_line, run

from diffq_cli import restore_quantized_state
from diffq_cli.config.schema import DataConfig
from diffq_cli.data.loaders import build_loaders
from diffq_cli.files import export as export_mod
from diffq_cli.files.coding import decode_state
from diffq_cli.models.factory import create_model
from diffq_cli.quant.state import FORMAT as STATE_FORMAT
from diffq_cli.quant.state import VERSION as STATE_VERSION
from diffq_cli.run.evaluate import accuracy

FAST = ["--model", "resnet18", "--epochs", "1", "data.input_size=16", "data.train_subset=128",
        "data.val_subset=96", "data.batch_size=32", "train.float_epochs=0"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "model.th"
    make_artifact(path)
    return path


# ------------------------------------------------------------------ recipe (item 5)
@pytest.mark.parametrize(("override", "message"), [
    ("quant.bits=3.5", "whole number between 2 and 15 for quant.method=lsq"),
    ("quant.bits=1", "whole number between 2 and 15 for quant.method=lsq"),
])
def test_lsq_bits_are_checked_when_the_recipe_loads(tmp_path, override, message):
    out = tmp_path / "run"
    result = run("finetune", *FAST, "quant.method=lsq", override, "--output", out)
    assert result.exit_code == 2 and message in one_error_line(result)
    assert not out.exists()
    assert run("finetune", "quant.method=lsq", "quant.bits=3", "--print-config").exit_code == 0


# ------------------------------------------------------------------ output paths (item 7)
def test_finetune_output_under_a_file_fails_before_any_work(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    result = run("finetune", *FAST, "--output", blocker / "run")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert str(blocker / "run") in line and "is a file" in line
    assert "float accuracy" not in result.stderr  # failed before the model was evaluated


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_outputs_in_a_read_only_directory(tmp_path, artifact):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        result = run("finetune", *FAST, "--output", ro / "run")
        assert result.exit_code == 2 and "not writable" in one_error_line(result)
        result = run("export", artifact, "-o", ro / "m.pt2")
        assert result.exit_code == 2 and "not writable" in one_error_line(result)
    finally:
        ro.chmod(0o755)


def test_export_output_under_a_file_fails_before_the_conversion(tmp_path, artifact, monkeypatch):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")

    def no_work(*args):
        raise AssertionError("the conversion started before the output was checked")

    monkeypatch.setattr(export_mod, "rebuild_model", no_work)
    result = run("export", artifact, "-o", blocker / "m.pt2")
    assert result.exit_code == 2 and str(blocker / "m.pt2") in one_error_line(result)


def test_bad_data_leaves_no_run_directory(tmp_path):
    out = tmp_path / "run"
    result = run("finetune", *FAST, "--dataset", "fashion-mnist", "--data-dir",
                 tmp_path / "nowhere", "--output", out)
    assert result.exit_code == 2
    one_error_line(result)
    assert not out.exists()


# ------------------------------------------------------------------ nonsense values (item 8)
def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def test_a_one_class_dataset_is_refused(tmp_path):
    data = tmp_path / "one-class"
    data.mkdir()
    for split, n in (("train", 64), ("t10k", 16)):
        _write_idx(data / f"{split}-images-idx3-ubyte", np.zeros((n, 8, 8), np.uint8))
        _write_idx(data / f"{split}-labels-idx1-ubyte", np.full(n, 3, np.uint8))
    out = tmp_path / "run"
    result = run("finetune", *FAST, "--dataset", "idx", "--data-dir", data, "--output", out)
    assert result.exit_code == 2 and "at least 2" in one_error_line(result)
    assert not out.exists()


def test_negative_gates_are_refused(artifact, tmp_path):
    result = run("size", artifact, "--max-mb", "-1")
    assert result.exit_code == 2 and "--max-mb" in one_error_line(result)
    result = run("export", artifact, "-o", tmp_path / "m.pt2", "--atol", "-0.1")
    assert result.exit_code == 2 and "--atol" in one_error_line(result)
    assert not (tmp_path / "m.pt2").exists()


def test_resume_flags(tmp_path):
    out = tmp_path / "run"
    result = run("finetune", *FAST, "--output", out, "--resume", "--overwrite")
    assert result.exit_code == 2 and "only one" in one_error_line(result)
    result = run("finetune", *FAST, "--output", out, "--resume")
    assert result.exit_code == 2 and "no checkpoint to resume" in one_error_line(result)
    assert not out.exists()


# ------------------------------------------------------------------ export format (item 9)
@pytest.mark.parametrize(("name", "fmt"), [
    ("m.safetensors", "safetensors"), ("m.pt2", "compact"), ("m.ts", "torchscript"),
])
def test_export_format_follows_the_suffix(artifact, tmp_path, name, fmt):
    result = run("export", artifact, "-o", tmp_path / name, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["format"] == fmt


def test_export_format_and_suffix_must_agree(artifact, tmp_path):
    result = run("export", artifact, "-o", tmp_path / "x.safetensors", "--format", "pt2")
    assert result.exit_code == 2 and "contradicts" in one_error_line(result)
    assert not (tmp_path / "x.safetensors").exists()
    result = run("export", artifact, "-o", tmp_path / "x.pt2", "--format", "pt2", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["format"] == "pt2"


# ------------------------------------------------------------------ recorded accuracy (item 10)
def test_recorded_accuracy_is_the_rebuilt_models_accuracy(tmp_path):
    """The accuracy finetune records is what an independent rebuild of the artifact scores:
    the state restored into a fresh model, evaluated by a plain loop on the same split."""
    out = tmp_path / "run"
    result = run("finetune", *FAST, "--max-steps", "3", "--output", out, "--json")
    assert result.exit_code == 0, result.output
    recorded = json.loads(result.stdout)["runs"][0]["accuracy"]
    blob = torch.load(io.BytesIO(gzip.decompress((out / "model.th").read_bytes())),
                      weights_only=True)
    assert blob["metrics"]["accuracy"] == recorded
    spec = blob["model"]
    model = create_model(spec["name"], num_classes=spec["num_classes"], in_chans=spec["in_chans"],
                         input_size=spec["input_size"])
    # The file's state is entropy-coded (artifact v2): decode it without the artifact reader.
    assert blob["version"] == 2
    state, _ = decode_state(blob["state"], STATE_FORMAT, STATE_VERSION)
    restore_quantized_state(model, state)
    _, val, _ = build_loaders(DataConfig(dataset="digits", input_size=16, val_subset=96,
                                       train_subset=1))
    assert accuracy(model, val) == recorded
