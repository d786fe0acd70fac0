"""Shared test setup: the model-name cache goes to a temporary directory, not ~/.cache."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _model_name_cache(tmp_path_factory):
    old = os.environ.get("DIFFQ_CACHE_DIR")
    os.environ["DIFFQ_CACHE_DIR"] = str(tmp_path_factory.mktemp("diffq-cache"))
    yield
    if old is None:
        os.environ.pop("DIFFQ_CACHE_DIR", None)
    else:
        os.environ["DIFFQ_CACHE_DIR"] = old


@pytest.fixture
def interrupt_after_checkpoints(monkeypatch):
    """``interrupt_after_checkpoints(n)``: the n-th DiffQ checkpoint is written, then the run
    stops as on Ctrl-C. Wraps the loop's file writer, so production code needs no test hook."""
    from diffq_cli import train

    def arm(n: int):
        real = train.atomic_write
        seen = {"n": 0}

        def write(path, data):
            real(path, data)
            if os.path.basename(path) == "checkpoint.pt":
                seen["n"] += 1
                if seen["n"] == n:
                    raise KeyboardInterrupt

        monkeypatch.setattr(train, "atomic_write", write)
        return monkeypatch

    return arm
