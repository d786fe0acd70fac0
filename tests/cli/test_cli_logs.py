"""Output for people and for logs (issue 11, points 2 and 3), through CliRunner (not a TTY):
plain step lines every train.log_every steps, float epochs in metrics.jsonl, TensorBoard,
eval/export progress lines, human tables (rounded, MiB, thousands separators), --json raw."""

import json
import re
import sys

import pytest
from artifact_factory import make_artifact
from cli_helpers import run

# 192 training images in batches of 32: 6 steps per epoch; one float epoch, one DiffQ epoch.
FAST = ["--model", "test_resnet", "--epochs", "1", "--mu", "1e-3", "data.input_size=16",
        "data.train_subset=192", "data.val_subset=96", "data.batch_size=32",
        "train.float_epochs=1", "train.log_every=2", "train.baseline=none"]
RAW_FLOAT = re.compile(r"\d\.\d{5,}|\d\.\d+e-\d\d\d")  # e.g. 94.98607242339833, 3.815e-005
NUM = r"\d+\.\d+"


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("logs") / "run"
    return run("finetune", *FAST, "--output", out), out


def test_step_lines_every_log_every_steps_without_a_tty(logged_run):
    result, _ = logged_run
    assert result.exit_code == 0, result.output
    err = result.stderr.splitlines()
    float_steps = [line for line in err if line.startswith("float step ")]
    diffq_steps = [line for line in err if line.startswith("mu=0.001 step ")]
    assert [line.split(":")[0] for line in float_steps] == [
        "float step 2/6", "float step 4/6", "float step 6/6"]
    assert [line.split(":")[0] for line in diffq_steps] == [
        "mu=0.001 step 2/6", "mu=0.001 step 4/6", "mu=0.001 step 6/6"]
    for line in float_steps:
        assert re.fullmatch(rf"float step \d/6: loss {NUM}, lr \S+, [\d,]+ img/s", line), line
    for line in diffq_steps:
        assert re.fullmatch(rf"mu=0\.001 step \d/6: loss {NUM}, lr \S+, size {NUM} MiB, "
                            rf"mean bits {NUM}, [\d,]+ img/s", line), line
    # one line per epoch too, after that stage's step lines
    float_epoch = err.index(next(x for x in err if x.startswith("float epoch 1/1 step 6")))
    assert float_epoch > err.index(float_steps[-1])
    assert any(re.match(r"mu=0\.001 epoch 1/1 step 6: .*quantized accuracy [\d.]+ %, "
                        r"true size [\d.]+ MiB$", x) for x in err)
    assert not any("step" in line for line in result.stdout.splitlines())  # stdout: tables


def test_metrics_jsonl_holds_float_and_diffq_epochs_with_a_stage(logged_run):
    result, out = logged_run
    assert result.exit_code == 0, result.output
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"], r["step"]) for r in records] == [("float", 1, 6),
                                                                      ("diffq", 1, 6)]
    assert records[0]["loss"] > 0 and "accuracy" not in records[0]
    summary = json.loads((out / "summary.json").read_text())
    assert records[-1]["accuracy"] == summary["runs"][0]["accuracy"]  # the consumers' last line


def test_finetune_tables_are_rounded_and_in_mib(logged_run):
    result, _ = logged_run
    assert result.exit_code == 0, result.output
    assert "MiB" in result.stdout and " MB" not in result.stdout
    assert not RAW_FLOAT.search(result.stdout), RAW_FLOAT.search(result.stdout)


def test_finetune_json_stays_one_document_of_raw_numbers(tmp_path):
    result = run("finetune", *FAST, "train.float_epochs=0", "--max-steps", "2", "--json",
                 "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert isinstance(doc["runs"][0]["true_mb"], float)
    assert "mu=0.001 step 2/2" in result.stderr


def test_tensorboard_logger_writes_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = run("finetune", *FAST, "--max-steps", "4", "train.logger=tensorboard",
                 "--output", out)
    assert result.exit_code == 0, result.output
    tags = {}
    for stage in ("float", "mu=0.001"):
        acc = EventAccumulator(str(out / "tensorboard" / stage))
        acc.Reload()
        tags[stage] = set(acc.Tags()["scalars"])
    assert {"float/loss", "float/lr", "float/images_per_s", "float/epoch_loss"} <= tags["float"]
    assert {"mu=0.001/loss", "mu=0.001/size_mb", "mu=0.001/mean_bits",
            "mu=0.001/epoch_accuracy", "mu=0.001/epoch_true_mb"} <= tags["mu=0.001"]
    acc = EventAccumulator(str(out / "tensorboard" / "mu=0.001"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("mu=0.001/loss")] == [2, 4]  # every log_every steps


def test_missing_tensorboard_is_one_line_and_exit_2_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    out = tmp_path / "run"
    result = run("finetune", *FAST, "train.logger=tensorboard", "--output", out)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'diffq-cli[tensorboard]'" in lines[0], result.stderr
    assert not out.exists()  # nothing was started


def test_unknown_logger_is_rejected(tmp_path):
    result = run("finetune", *FAST, "train.logger=wandb", "--output", tmp_path / "run")
    assert result.exit_code == 2 and "none, tensorboard" in result.stderr


# ------------------------------------------------------------------ eval, export, size


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("tables") / "model.th"
    make_artifact(path, metrics={"accuracy": 94.98607242339833})
    return path


def test_eval_table_in_words_with_progress_on_stderr(artifact):
    result = run("eval", artifact)
    assert result.exit_code == 0, result.output
    for text in ("accuracy (measured now)", "accuracy (recorded at training)", "94.99 %",
                 "validation images", "359"):
        assert text in result.stdout, text
    assert "recorded_accuracy" not in result.stdout and not RAW_FLOAT.search(result.stdout)
    err = result.stderr.splitlines()
    assert err[0] == f"evaluating {artifact} on digits..."
    assert re.fullmatch(rf"evaluating {re.escape(str(artifact))} on digits: done in {NUM} s",
                        err[1])


def test_eval_json_is_unchanged(artifact):
    result = run("eval", artifact, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # the progress lines went to stderr
    assert doc["recorded_accuracy"] == 94.98607242339833 and isinstance(doc["accuracy"], float)
    assert "evaluating" in result.stderr


def test_export_table_in_words(artifact, tmp_path):
    result = run("export", artifact, "-o", tmp_path / "m.pt2")
    assert result.exit_code == 0, result.output
    nbytes = (tmp_path / "m.pt2").stat().st_size
    for text in ("export matches the quantized model", "<= 1e-04)", f"{nbytes:,} bytes (",
                 "true quantized size", " MiB", "weights dtype"):
        assert text in result.stdout, text
    for raw in ("True", "max_abs_diff", "dtype_diff", "true_mb"):
        assert raw not in result.stdout, raw
    assert not RAW_FLOAT.search(result.stdout)
    err = result.stderr.splitlines()
    assert err[0] == f"exporting {tmp_path / 'm.pt2'} (compact)..." and "done in" in err[1]


def test_export_json_is_unchanged(artifact, tmp_path):
    result = run("export", artifact, "-o", tmp_path / "m.pt2", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["bytes"] == (tmp_path / "m.pt2").stat().st_size
    assert isinstance(doc["true_mb"], float) and doc["dtype_diff"] is None


def test_size_tables_use_mib_and_separators(artifact):
    result = run("size", artifact)
    assert result.exit_code == 0, result.output
    nbytes = artifact.stat().st_size
    assert f"{nbytes:,} bytes ({nbytes / 2**20:.3f} MiB)" in result.stdout
    assert "size (MiB)" in result.stdout and " MB" not in result.stdout
    assert "kept in float32" in result.stdout  # not "32" under a 0-15 bits header
    assert not RAW_FLOAT.search(result.stdout), RAW_FLOAT.search(result.stdout)
    doc = json.loads(run("size", artifact, "--json").stdout)
    assert doc["file_bytes"] == nbytes and isinstance(doc["true_mb"], float)


def test_help_states_mib():
    assert "MiB" in run("size", "--help").stdout
    assert "MiB" in run("finetune", "--help").stdout


@pytest.mark.parametrize("method,shown", [("lsq", "lsq"), ("uniform", "qat")])
def test_fixed_width_runs_are_labelled_by_method_and_bits(tmp_path, method, shown):
    out = tmp_path / method
    result = run("finetune", "--model", "test_resnet", "--epochs", "1", "--max-steps", "2",
                     "--baseline", "none", "data.input_size=16", "data.train_subset=64",
                     "data.val_subset=32", "train.float_epochs=0", f"quant.method={method}",
                     "quant.bits=4", "--output", out)
    assert result.exit_code == 0, result.output
    (row,) = json.loads((out / "summary.json").read_text())["runs"]
    assert row["method"] == shown and row["label"] == "4 bits"
    assert "mu=" not in result.stdout and not re.search(r"\bmu\b", result.stderr), result.stderr
    assert re.search(rf"{shown}\s*│\s*4 bits", result.stdout), result.stdout
