"""Atomic writes and file-kind detection of diffq_cli.files.artifact."""

import gzip
import io
import os

import pytest
import torch

from diffq_cli.errors import InputError
from diffq_cli.fileio import atomic_write
from diffq_cli.files.artifact import read_file


def test_atomic_write_gives_normal_permissions_and_replaces(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temp file left


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_read_file_kinds(tmp_path):
    plain = tmp_path / "float.pt"
    torch.save({"w": torch.ones(2)}, plain)
    assert read_file(plain)[0] == "float"
    zipped = tmp_path / "float.pt.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_file(zipped)[0] == "float"
    foreign = tmp_path / "list.pt"
    buf = io.BytesIO()
    torch.save([1, 2, 3], buf)
    foreign.write_bytes(buf.getvalue())
    with pytest.raises(InputError, match="not a diffq artifact"):
        read_file(foreign)
    wrong = tmp_path / "state.pt"
    torch.save({"format": "diffq_cli.quantized_state", "version": 99}, wrong)
    with pytest.raises(InputError, match="version 99"):
        read_file(wrong)


def test_read_file_on_a_directory_points_to_the_artifact(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.th").write_bytes(b"x")
    with pytest.raises(InputError, match="is a directory.*model.th"):
        read_file(tmp_path)
