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
