"""CLI tests through Typer's CliRunner: finetune end to end on digits, size, recipes, models,
errors and exit codes, --json, several mu, resume after an interruption."""

import gzip
import io
import json

import pytest
import torch
from typer.testing import CliRunner

from diffq_cli.cli.app import app

# A tiny, fast run: 16x16 digits subset, one epoch of a few steps.
FAST = [
    "--model",
    "resnet18",
    "--epochs",
    "1",
    "data.input_size=16",
    "data.train_subset=192",
    "data.val_subset=96",
    "data.batch_size=32",
    "train.float_epochs=0",
]


@pytest.fixture()
def runner():
    return CliRunner()


def run(runner, *args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def load_artifact(path):
    return torch.load(io.BytesIO(gzip.decompress(path.read_bytes())), weights_only=True)


def test_help_and_version(runner):
    result = run(runner, "--help")
    assert result.exit_code == 0
    for command in ("finetune", "size", "eval", "export", "recipes", "models"):
        assert command in result.stdout
    result = run(runner, "--version")
    assert result.exit_code == 0 and result.stdout.startswith("diffq ")


def test_finetune_end_to_end(runner, tmp_path):
    out = tmp_path / "run"
    result = run(runner, "finetune", *FAST, "--mu", "1e-3", "--output", out)
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "metrics.jsonl", "model.th", "summary.json"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint.pt").exists()  # a finished run drops its resume state
    assert "trade-off" in result.stdout and "mean bits" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"][0]["mu"] == 1e-3
    # The three records of the final accuracy agree: summary, metrics.jsonl, the artifact.
    last_epoch = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    recorded = load_artifact(out / "model.th")["metrics"]["accuracy"]
    assert summary["runs"][0]["accuracy"] == last_epoch["accuracy"] == recorded
    artifact = load_artifact(out / "model.th")  # weights_only=True must accept it
    assert artifact["format"] == "diffq_cli.artifact"
    assert artifact["model"]["in_chans"] == 1 and artifact["model"]["num_classes"] == 10
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["epoch"] == 1

    size = run(runner, "size", out / "model.th", "--json")
    assert size.exit_code == 0
    report = json.loads(size.stdout)
    assert report["kind"] == "artifact"
    assert report["true_mb"] < report["float_mb"] / 3  # 8 bits vs 32
    assert report["file_bytes"] == (out / "model.th").stat().st_size
    table = run(runner, "size", out / "model.th")
    assert "true quantized size" in table.stdout
    gate = run(runner, "size", out / "model.th", "--max-mb", "0.001")
    assert gate.exit_code == 1 and "over --max-mb" in gate.stderr


def test_finetune_json_prints_one_document(runner, tmp_path):
    result = run(
        runner, "finetune", *FAST, "--max-steps", "2", "--output", tmp_path / "r", "--json"
    )
    assert result.exit_code == 0
    summary = json.loads(result.stdout)  # the whole stdout is one JSON document
    assert summary["runs"][0]["artifact"].endswith("model.th")


def test_several_mu_share_start_and_make_one_table(runner, tmp_path):
    out = tmp_path / "sweep"
    result = run(
        runner, "finetune", *FAST, "--max-steps", "2", "--mu", "0", "--mu", "10", "--output", out
    )
    assert result.exit_code == 0, result.output
    assert (out / "mu0" / "model.th").is_file() and (out / "mu10" / "model.th").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert [r["mu"] for r in summary["runs"]] == [0.0, 10.0]
    assert result.stdout.count("trade-off") == 1


def test_print_config_applies_flags_and_overrides(runner):
    result = run(
        runner,
        "finetune",
        "--print-config",
        "--model",
        "mobilenet_v2",
        "--mu",
        "0.5",
        "optim.lr=0.2",
    )
    assert result.exit_code == 0
    assert "name: mobilenet_v2" in result.stdout
    assert "lr: 0.2" in result.stdout and "mu: [0.5]" in result.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "resnt18", "--max-steps", "1"], "did you mean"),
        (["optim.lrr=0.1"], "unknown recipe key 'optim.lrr'"),
        (["--mu", "-1"], "mu must be >= 0"),
        (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/dir"], "fashion-mnist"),
        (["--recipe", "no-such-recipe"], "no-such-recipe"),
    ],
)
def test_finetune_bad_input_exits_2_with_one_line(runner, tmp_path, args, needle):
    result = run(runner, "finetune", *args, "--output", tmp_path / "x")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert needle in lines[0]


@pytest.mark.parametrize("content", [b"not a model", b"\x1f\x8b\x08truncated"])
def test_size_rejects_corrupt_files(runner, tmp_path, content):
    bad = tmp_path / "bad.th"
    bad.write_bytes(content)
    result = run(runner, "size", bad)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    missing = run(runner, "size", tmp_path / "missing.th")
    assert missing.exit_code == 2 and "no such file" in missing.stderr


def test_size_reads_library_state_and_float_checkpoint(runner, tmp_path):
    from diffq_cli import DiffQuantizer

    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    torch.save(model.state_dict(), tmp_path / "float.pt")
    result = json.loads(run(runner, "size", tmp_path / "float.pt", "--json").stdout)
    assert result["kind"] == "float"
    assert result["float_mb"] == pytest.approx((64 * 64 + 64 + 64 * 10 + 10) * 4 / 2**20)
    quantizer = DiffQuantizer(model, min_size=0.0, group_size=8)
    raw = io.BytesIO()
    torch.save(quantizer.get_quantized_state(), raw)
    (tmp_path / "state.th").write_bytes(raw.getvalue())
    (tmp_path / "state.th.gz").write_bytes(gzip.compress(raw.getvalue()))
    for name in ("state.th", "state.th.gz"):
        result = json.loads(run(runner, "size", tmp_path / name, "--json").stdout)
        assert result["kind"] == "state"
        assert result["true_mb"] == pytest.approx(quantizer.true_model_size())


def test_recipes_and_models_listing(runner):
    result = run(runner, "recipes")
    assert result.exit_code == 0
    for name in (
        "default",
        "fashion-mnist-resnet18",
        "cifar10-resnet18",
        "cifar100-mobilenetv2",
        "imagenet-deit-tiny",
    ):
        assert name in result.stdout
    one = run(runner, "recipes", "default")
    assert one.exit_code == 0 and "quant:" in one.stdout
    assert run(runner, "recipes", "nope").exit_code == 2
    models = run(runner, "models", "resnet1*")
    assert models.exit_code == 0 and "resnet18" in models.stdout
    assert run(runner, "models", "zzz-no-such*").exit_code == 2


def test_nan_loss_stops_and_keeps_last_checkpoint(runner, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    calls = {"n": 0}
    real = torch.nn.CrossEntropyLoss

    class NanAfterFirstEpoch(real):
        def forward(self, logits, target):
            calls["n"] += 1
            loss = super().forward(logits, target)
            return loss * float("nan") if calls["n"] > 6 else loss

    monkeypatch.setattr("diffq_cli.run.train.torch.nn.CrossEntropyLoss", NanAfterFirstEpoch)
    # The DiffQ run's loss (no float reference trains before it).
    result = run(runner, "finetune", *FAST, "--epochs", "2", "--baseline", "ptq", "--output", out)
    assert result.exit_code == 1
    assert "loss became nan" in result.stderr
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1  # the good epoch-1 checkpoint is kept


def test_interrupted_run_resumes_to_the_same_metrics(runner, tmp_path,
                                                     interrupt_after_checkpoints):
    args = [*FAST, "--epochs", "2", "data.train_subset=128"]
    full = tmp_path / "full"
    assert run(runner, "finetune", *args, "--output", full).exit_code == 0

    part = tmp_path / "part"
    patched = interrupt_after_checkpoints(1)
    stopped = run(runner, "finetune", *args, "--output", part)
    assert stopped.exit_code == 130 and "--resume" in stopped.stderr
    patched.undo()
    resumed = run(runner, "finetune", *args, "--output", part, "--resume")
    assert resumed.exit_code == 0, resumed.output
    expected = (full / "metrics.jsonl").read_text().splitlines()
    got = (part / "metrics.jsonl").read_text().splitlines()
    drop = ("seconds",)
    clean = [{k: v for k, v in json.loads(x).items() if k not in drop} for x in expected]
    assert [{k: v for k, v in json.loads(x).items() if k not in drop} for x in got] == clean


def test_startup_imports_no_heavy_modules():
    """`diffq --help` stays fast: the CLI module must not import torch, timm or torchvision."""
    import subprocess
    import sys

    code = (
        "import sys, diffq_cli.cli.app; "
        "print(sorted(m for m in ('torch', 'timm', 'torchvision', 'rich') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_existing_run_is_not_replaced_without_overwrite(runner, tmp_path):
    out = tmp_path / "run"
    assert run(runner, "finetune", *FAST, "--max-steps", "1", "--output", out).exit_code == 0
    before = (out / "model.th").read_bytes()
    again = run(runner, "finetune", *FAST, "--max-steps", "1", "--output", out)
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    assert (out / "model.th").read_bytes() == before
    replaced = run(runner, "finetune", *FAST, "--max-steps", "1", "--output", out, "--overwrite")
    assert replaced.exit_code == 0


def test_float_stage_runs_first_and_is_reused_on_resume(runner, tmp_path):
    out = tmp_path / "float"
    args = [*FAST, "--max-steps", "1", "train.float_epochs=1", "--output", out]
    result = run(runner, "finetune", *args, "--keep-checkpoint")  # else nothing to resume
    assert result.exit_code == 0, result.output
    assert "float epoch 1/1" in result.stderr
    assert (out / "float.pt").is_file()
    resumed = run(runner, "finetune", *args, "--resume")
    assert resumed.exit_code == 0
    assert "float epoch" not in resumed.stderr and "float weights from" in resumed.stderr
