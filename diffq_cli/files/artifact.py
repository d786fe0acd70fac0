"""The ``model.th`` artifact: a gzipped ``torch.save`` of the quantized state plus what is needed
to rebuild and evaluate the model with no other input.

Layout (plain types only, so ``torch.load(weights_only=True)`` reads it)::

    {"format": "diffq_cli.artifact", "version": 2,
     "state": <the quantized state, entropy-coded: see coding.py>,
     "model": {"name", "source", "num_classes", "in_chans", "input_size"},
     "data": {"dataset", "mean", "std", "input_size", "num_classes", "in_chans"},
     "recipe": {...resolved recipe...}, "metrics": {...}, "versions": {...}}

Version 1 (still read) held the bit-packed state itself (quant/state.py) under "state". Readers
give back the bit-packed state for both versions, so callers never see the coding. They detect
gzip by its magic bytes, so plain (not gzipped) files load too, and validate the format,
version and every field before using anything (statecheck.py); the gzip CRC and the coded
streams' own checks catch damaged bytes.
"""

import gzip
import io
import zlib
from pathlib import Path

from diffq_cli.errors import InputError
from diffq_cli.fileio import atomic_write, torch_bytes

FORMAT = "diffq_cli.artifact"
VERSION = 2
READS = (1, 2)
GZIP_MAGIC = b"\x1f\x8b"


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
    """Writes the gzipped artifact (version 2: ``state`` entropy-coded) atomically.

    Returns:
        Its size in bytes.
    """
    blob = artifact_bytes(state, model, data, recipe, metrics)
    atomic_write(path, blob)
    return len(blob)


def artifact_bytes(state: dict, model: dict, data: dict, recipe: dict, metrics: dict) -> bytes:
    """The bytes ``save_artifact`` writes (also: the size a state's file would have)."""
    from diffq_cli.files.coding import encode_state

    obj = {
        "format": FORMAT,
        "version": VERSION,
        "state": encode_state(state),
        "model": model,
        "data": data,
        "recipe": recipe,
        "metrics": metrics,
        "versions": versions(),
    }
    return torch_bytes(obj, compress=True)


def read_file(path) -> tuple[str, dict]:
    """Loads an artifact, a library quantized state or a float state dict.

    Returns:
        (kind, object) with kind "artifact", "state" or "float".

    Raises:
        InputError: missing, truncated, corrupt or foreign file (one line).
    """
    import torch

    from diffq_cli.quant.state import FORMAT as STATE_FORMAT

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
        except (OSError, EOFError, ValueError, zlib.error) as err:
            # zlib.error: a damaged deflate stream; OSError: bad header or CRC; EOFError: cut.
            raise InputError(f"{path} is a truncated or corrupt gzip file ({err})") from None
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for bad bytes; all mean "unreadable"
        raise InputError(f"{what} (unreadable, truncated, or holds pickled code)") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("version") not in READS:
            raise InputError(
                f"{path}: artifact version {obj.get('version')} is not supported by this diffq "
                f"(reads versions {', '.join(map(str, READS))}); upgrade diffq-cli"
            )
        if obj["version"] == 2:
            _check(path, obj, _decode)
        _check(path, obj, _check_artifact)
        return "artifact", obj
    if isinstance(obj, dict) and obj.get("format") == STATE_FORMAT:
        _check(path, obj, _check_state)
        return "state", obj
    if isinstance(obj, dict):
        inner = obj.get("state_dict", obj.get("model", obj))
        if isinstance(inner, dict) and inner and all(torch.is_tensor(v) for v in inner.values()):
            return "float", inner
    raise InputError(what)


def _decode(obj: dict) -> None:
    """Replaces a v2 artifact's coded state by the bit-packed one; ``disk_bytes``: per tensor,
    the bytes its coded streams take in the file."""
    from diffq_cli.files.coding import decode_state
    from diffq_cli.quant.state import FORMAT as STATE_FORMAT
    from diffq_cli.quant.state import VERSION as STATE_VERSION

    obj["state"], obj["disk_bytes"] = decode_state(obj.get("state"), STATE_FORMAT, STATE_VERSION)


def _check_state(state) -> None:
    from diffq_cli.files.check import check_state_deep
    from diffq_cli.quant.state import check_state

    check_state(state)
    check_state_deep(state)


def _check_artifact(obj) -> None:
    from diffq_cli.files.check import check_artifact_sections

    _check_state(obj.get("state"))
    check_artifact_sections(obj)


def _check(path, obj, check) -> None:
    try:
        check(obj)
    except ValueError as err:
        raise InputError(f"{path}: {err}") from None


def load_artifact(path) -> dict:
    """The artifact at ``path``; InputError for anything else (states, checkpoints, junk)."""
    kind, obj = read_file(path)
    if kind != "artifact":
        what = "quantized state" if kind == "state" else "float checkpoint"
        raise InputError(f"{path} is a {what}, not an artifact; pass the model.th written by "
                         "diffq finetune")
    return obj


def rebuild_model(artifact: dict):
    """The model described by an artifact, with its quantized weights restored, in eval mode."""
    from diffq_cli.models.factory import create_model
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
