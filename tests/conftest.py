"""Shared test setup: the model-name cache goes to a temporary directory, not ~/.cache; no
test opens a network connection; thread count set per test, never at import."""

import ipaddress
import os
import socket
import sys
from pathlib import Path

import pytest

# The shared helpers (golden.py, cli_helpers.py, ...) import by name from every test folder.
# Appended, not prepended: the test folders' names (cli, data, models) must not shadow anything.
sys.path.append(str(Path(__file__).parent))

_LOOPBACK = ("127.", "::1", "localhost", "0.0.0.0")


def _numeric(host) -> bool:
    """An IP address needs no name lookup (the connect guard then decides)."""
    try:
        ipaddress.ip_address(host.decode() if isinstance(host, bytes) else host)
        return True
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any connection beyond loopback (DDP tests rendezvous on 127.0.0.1) fails the test."""
    real = socket.socket.connect

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if sock.family == socket.AF_UNIX or str(host).startswith(_LOOPBACK):
            return real(sock, address)
        raise AssertionError(f"a test tried to open a network connection to {address}")

    real_lookup = socket.getaddrinfo

    def lookup(host, *args, **kwargs):  # a name lookup is network traffic too (DNS)
        if host is None or _numeric(host) or str(host).startswith(_LOOPBACK):
            return real_lookup(host, *args, **kwargs)
        raise AssertionError(f"a test tried to look up the network name {host!r}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", lookup)


@pytest.fixture
def one_thread():
    """Tiny models run 50x faster on one thread than on two OpenMP threads fighting over busy
    shared cores. ``DIFFQ_TEST_THREADS`` overrides it (bench/cross_check.sh runs 1 and 2)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("DIFFQ_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(old)


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
    from diffq_cli.run import train
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
