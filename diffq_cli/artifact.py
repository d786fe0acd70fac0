"""The ``model.th`` artifact: a gzipped ``torch.save`` of the quantized state plus what is needed
to rebuild and evaluate the model with no other input.

Layout (plain types only, so ``torch.load(weights_only=True)`` reads it)::

    {"format": "diffq_cli.artifact", "version": 1,
     "state": <quantized state, see quant/state.py>,
     "model": {"name", "source", "num_classes", "in_chans", "input_size"},
     "data": {"dataset", "mean", "std", "input_size", "num_classes", "in_chans"},
     "recipe": {...resolved recipe...}, "metrics": {...}, "versions": {...}}

Readers detect gzip by its magic bytes, so plain (not gzipped) files load too, and validate the
format and version before using anything.
"""

import gzip
import io
import os
import tempfile
from pathlib import Path

from diffq_cli.errors import InputError

FORMAT = "diffq_cli.artifact"
VERSION = 1
GZIP_MAGIC = b"\x1f\x8b"


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


def versions() -> dict:
    import torch

    from diffq_cli import __version__

    # str(): torch.__version__ is a TorchVersion object, which weights_only loading refuses.
    out = {"diffq_cli": __version__, "torch": str(torch.__version__)}
    for name in ("torchvision", "timm"):
        try:
            out[name] = str(__import__(name).__version__)
        except ImportError:
            out[name] = None
    return out


def save_artifact(path, state: dict, model: dict, data: dict, recipe: dict, metrics: dict) -> int:
    """Writes the gzipped artifact atomically; returns its size in bytes."""
    obj = {
        "format": FORMAT,
        "version": VERSION,
        "state": state,
        "model": model,
        "data": data,
        "recipe": recipe,
        "metrics": metrics,
        "versions": versions(),
    }
    blob = torch_bytes(obj, compress=True)
    atomic_write(path, blob)
    return len(blob)


def read_file(path) -> tuple[str, dict]:
    """Loads an artifact, a library quantized state or a float state dict.

    Returns:
        (kind, object) with kind "artifact", "state" or "float".

    Raises:
        InputError: missing, truncated, corrupt or foreign file (one line).
    """
    import torch

    from diffq_cli.quant.state import FORMAT as STATE_FORMAT
    from diffq_cli.quant.state import check_state

    path = Path(path)
    if path.is_dir():
        found = next(iter(sorted(path.glob("**/model.th"))), None)
        hint = f", e.g. {found}" if found else ""
        raise InputError(f"{path} is a directory; pass a file (a run's model.th{hint})")
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    raw = path.read_bytes()
    what = f"{path} is not a diffq artifact, quantized state or float checkpoint"
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, ValueError) as err:
            raise InputError(f"{path} is a truncated or corrupt gzip file ({err})") from None
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for bad bytes; all mean "unreadable"
        raise InputError(f"{what} (unreadable, truncated, or holds pickled code)") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("version") != VERSION:
            raise InputError(
                f"{path}: artifact version {obj.get('version')} is not supported by this diffq "
                f"(reads version {VERSION}); upgrade diffq-cli"
            )
        _check(path, obj.get("state"), check_state)
        return "artifact", obj
    if isinstance(obj, dict) and obj.get("format") == STATE_FORMAT:
        _check(path, obj, check_state)
        return "state", obj
    if isinstance(obj, dict):
        inner = obj.get("state_dict", obj.get("model", obj))
        if isinstance(inner, dict) and inner and all(torch.is_tensor(v) for v in inner.values()):
            return "float", inner
    raise InputError(what)


def _check(path, state, check_state) -> None:
    try:
        check_state(state)
    except ValueError as err:
        raise InputError(f"{path}: {err}") from None


def rebuild_model(artifact: dict):
    """The model described by an artifact, with its quantized weights restored, in eval mode."""
    from diffq_cli.models import create_model
    from diffq_cli.quant.state import restore

    spec = artifact["model"]
    model = create_model(
        spec["name"],
        source=spec.get("source", "auto"),
        num_classes=spec["num_classes"],
        in_chans=spec["in_chans"],
        input_size=spec.get("input_size"),
    )
    try:
        restore(model, artifact["state"])
    except ValueError as err:
        raise InputError(f"artifact does not match model {spec['name']}: {err}") from None
    return model.eval()
