"""The library leaves the process as it found it: environment variables, matplotlib's backend
and settings, the hub client's offline flag (a library user's own code depends on them)."""

import os
import subprocess
import sys

import matplotlib
from cli_helpers import run

FAST = ["--model", "test_resnet", "--epochs", "1", "--baseline", "none", "data.input_size=16",
        "data.train_subset=64", "data.val_subset=32", "data.batch_size=32",
        "train.float_epochs=0"]


def _settings() -> dict:
    return {k: v for k, v in matplotlib.rcParams.items() if k != "backend"}


def test_import_leaves_the_environment_alone():
    code = ("import os; before = dict(os.environ); import diffq_cli, diffq_cli.cli.app; "
            "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_finetune_leaves_environment_and_matplotlib_alone(tmp_path):
    # Importing torchvision's ops imports torch._dynamo, which sets TORCHINDUCTOR_CACHE_DIR:
    # torch's own import side effect, done before the snapshot.
    import timm  # noqa: F401
    import torchvision.models  # noqa: F401

    env, backend, settings = dict(os.environ), matplotlib.get_backend(), _settings()
    result = run("finetune", *FAST, "--mu", "1e-3", "--output", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "tradeoff.svg").is_file()  # it did draw
    assert dict(os.environ) == env
    assert matplotlib.get_backend() == backend
    assert _settings() == settings


def test_a_test_that_opens_a_network_connection_fails():
    import socket

    import pytest

    with pytest.raises(AssertionError, match="network connection"):
        socket.create_connection(("192.0.2.1", 443), timeout=0.1)  # TEST-NET: never routed
    with pytest.raises(AssertionError, match="network name"):
        socket.create_connection(("huggingface.co", 443), timeout=0.1)
