"""Writing files safely: atomic replacement, writability checks, ``torch.save`` to bytes, strict
JSON values.

Every file diffq writes (artifacts, checkpoints, metrics, exports, pictures, caches) goes
through ``atomic_write``: a crash never leaves half a file.
"""

import gzip
import io
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffq_cli.errors import InputError


def atomic_write(path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temp file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions of a new file
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path, what: str = "output") -> None:
    """Raises InputError unless files can be created at ``path`` (a file or directory to be).

    Called before any work, so that a bad ``--output`` fails at once instead of after a
    training run or a whole export. Probes the nearest existing ancestor by creating (and
    removing) a temp file: permission bits alone miss read-only file systems.
    """
    path = Path(path).expanduser()
    ancestor = path if path.is_dir() else path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(
            f"cannot write {what} {path}: {ancestor} is a file, not a directory; "
            "choose another path"
        )
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise InputError(
            f"cannot write {what} {path}: {ancestor} is not writable ({reason}); "
            "choose another path"
        ) from None


def torch_bytes(obj, compress: bool = False) -> bytes:
    """``torch.save`` of ``obj`` as bytes, gzipped (deterministic header) if asked."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


def plain_json(obj: Any) -> Any:
    """``obj`` as strict JSON values: NaN/inf as null, tuples as lists, paths and tensor
    scalars as plain values (for ``--json`` documents and ``summary.json``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): plain_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_json(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return plain_json(obj.item())
    return str(obj)
