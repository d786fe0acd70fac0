"""Artifact -> deployable files, each loaded back and checked against the quantized model.

Formats (``FORMATS``); each file is written atomically, loaded back in-process and run on a
sample batch (8 validation images of the recorded dataset, or a seeded random batch when the
data is not on this machine), and its outputs are compared with the quantized model rebuilt
from the artifact (``max_abs_diff``, gated by ``atol``):

- ``compact`` (default, ``.pt2``): a ``torch.export`` program that keeps the weights packed:
  per bit width one uint8 stream of bit planes, the packed per-group widths and one range per
  tensor; its graph unpacks and dequantizes them (``compact.py``) before the network runs.
  Load it with plain PyTorch, no diffq_cli: ``torch.export.load(path).module()(x)``.
  Why torch.export and not TorchScript: it is PyTorch's maintained, versioned format for
  programs, while torch 2.14 marks ``torch.jit`` script, trace, save *and* load deprecated
  (FutureWarning on every load). Its cost: a program has no load-time hook, so the
  dequantization runs on every call instead of once at load. Measured for resnet18 (digits,
  32x32, 2 CPU threads): about 50 ms per call, i.e. 64 ms against 8 ms for ``pt2`` at batch
  1, 93 against 41 ms at batch 64, 184 against 131 ms at batch 256. The file is 1.03x the
  true size (11.3 MB for 10.9 MB, the float model is 42.7 MB); the graph adds ~0.3 MB.
  Pick ``pt2`` when single-image latency matters more than size.
- ``pt2``: ``torch.export`` program of the dequantized float model.
- ``torchscript``: ``torch.jit.trace`` of the dequantized model, for runtimes that still need
  it (deprecated by PyTorch; the warnings are silenced here since the user asked for it).
- ``safetensors``: the dequantized ``state_dict`` (``dtype`` fp32, fp16 or bf16) for
  ``load_state_dict`` into ``create_model(**spec)``; the metadata holds the model spec, the
  data spec and the metrics as JSON strings. fp16/bf16 files are checked against the
  quantized weights rounded the same way; the rounding's own effect is ``dtype_diff``.
- ``onnx``: the dequantized graph (``torch.onnx.export``, dynamic batch), with the optional
  extra ``diffq-cli[onnx]``; checked with onnxruntime.

``weights="int"`` (``--weights int``) applies to ``pt2`` and ``onnx`` (and picks ``pt2`` for a
``.pt2`` output without ``--format``): the quantized weights are stored as integers with one
scale per output channel and dequantized in the graph (``intweights.py``, ``intformats.py``).
"""

import contextlib
from pathlib import Path

from diffq_cli.errors import InputError
from diffq_cli.fileio import atomic_write, check_writable
from diffq_cli.files.artifact import load_artifact, rebuild_model
from diffq_cli.files.formats import DTYPES, WRITERS, need_onnx
from diffq_cli.files.intformats import INT_WRITERS
from diffq_cli.models.factory import logits as _logits

FORMATS = ("compact", "pt2", "torchscript", "safetensors", "onnx")
WEIGHTS = ("float", "int", "qdq")
_SUFFIX = {"compact": ".compact.pt2", "pt2": ".pt2", "torchscript": ".torchscript.pt",
           "safetensors": ".safetensors", "onnx": ".onnx"}
# Formats an output name implies ("-o x.onnx"); the first is the one chosen without --format.
_BY_SUFFIX = {".safetensors": ("safetensors",), ".onnx": ("onnx",), ".ts": ("torchscript",),
              ".torchscript": ("torchscript",), ".pt2": ("compact", "pt2")}
SAMPLES = 8


def export_artifact(path, out=None, fmt: str | None = None, atol: float = 1e-4,
                    dtype: str = "fp32", activity=None, weights: str = "float") -> dict:
    """Write ``fmt`` from an artifact, load it back and compare outputs on a sample batch.

    Args:
        path: the artifact (``model.th``) written by ``diffq finetune``.
        out: output file (or an existing directory); default: next to ``path``.
        fmt: one of ``FORMATS``; None: implied by the suffix of ``out`` (``.safetensors``,
            ``.onnx``, ``.ts``/``.torchscript``; ``.pt2`` and anything else: ``compact``).
        atol: largest allowed abs difference between the file's outputs and the quantized
            model's, rebuilt from the artifact (with ``dtype``, its weights rounded to it).
        dtype: weights dtype of ``safetensors``: ``fp32``, ``fp16`` or ``bf16``.
        weights: ``float`` (dequantized weights) or ``int`` (``pt2`` and ``onnx`` only:
            integer weights and per-channel scales, dequantized in the graph).
        activity: ``activity(description)`` gives a context manager shown while the file is
            written and checked (``Reporter.activity``), entered once the inputs are checked.

    Returns:
        ``{"format", "path", "bytes", "true_mb", "max_abs_diff", "atol", "ok", "dtype",
        "dtype_diff", "weights", "int"}``: ``ok`` is False when ``max_abs_diff`` is above
        ``atol`` (the CLI exits 1); ``dtype_diff`` is how far rounding the weights to
        ``dtype`` moved the outputs (None for fp32), for information; ``int``
        (``weights="int"`` only, else None) counts the tensors per integer dtype, the
        near-exact ones and those kept float.

    Example:
        >>> export_artifact("runs/resnet18-digits-mu0.001/model.th", "model.pt2")["ok"]
        True
    """
    import torch

    from diffq_cli.quant.summary import summarize_state

    if weights not in WEIGHTS:
        raise InputError(f"unknown --weights '{weights}'; choose one of: float, int, qdq")
    if weights == "int" and fmt is None and resolve_format(out, None) == "compact":
        fmt = "pt2"  # compact is already integer (bit-packed): int weights mean a pt2 program
    fmt = resolve_format(out, fmt)
    if weights == "int" and fmt not in INT_WRITERS:
        raise InputError(f"--weights int applies to --format pt2 or onnx, not {fmt}")
    if weights == "qdq" and fmt != "onnx":
        raise InputError(f"--weights qdq applies to --format onnx (an .onnx output), not {fmt}")
    if atol < 0:
        raise InputError(f"--atol must be >= 0, got {atol:g}")
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}'; choose one of: fp32, fp16, bf16")
    if dtype != "fp32" and fmt != "safetensors":
        raise InputError(f"--dtype {dtype} applies to --format safetensors only")
    if fmt == "onnx":
        need_onnx()
    out = _output_path(Path(path), out, fmt, weights)
    check_writable(out, "export")  # before the conversion, not after it
    artifact = load_artifact(path)
    model = rebuild_model(artifact)
    x = sample_batch(artifact)
    with (activity or (lambda _: contextlib.nullcontext()))(f"exporting {out} ({fmt})"):
        with torch.no_grad():
            expected = _logits(model(x))
            dtype_diff = None
            if dtype != "fp32":  # the file holds rounded weights: check it against exactly those
                rounded = _logits(_rounded(model, DTYPES[dtype])(x))
                dtype_diff, expected = _max_diff(rounded, expected), rounded
        writer, runner = WRITERS[fmt]
        info = None
        if weights != "float":
            data, info = INT_WRITERS[fmt](model, artifact, x, dtype, qdq=weights == "qdq")
        else:
            data = writer(model, artifact, x, dtype)
        atomic_write(out, data)
        with torch.no_grad():
            diff = _max_diff(_logits(runner(out, artifact, x)), expected)
    return {"format": fmt, "path": str(out), "bytes": out.stat().st_size,
            "true_mb": summarize_state(artifact["state"])["true_mb"], "max_abs_diff": diff,
            "atol": float(atol), "ok": diff <= atol, "dtype": dtype, "dtype_diff": dtype_diff,
            "weights": weights, "int": info}


def sample_batch(artifact: dict, n: int = SAMPLES):
    """``n`` validation images of the artifact's dataset, or a seeded random batch offline."""
    import torch

    from diffq_cli.config.schema import DataConfig
    from diffq_cli.data.loaders import build_loaders

    data, spec = artifact.get("data") or {}, artifact["model"]
    size = int(data.get("input_size") or spec.get("input_size") or 32)
    try:
        data_dir = ((artifact.get("recipe") or {}).get("data") or {}).get("data_dir")
        loaders = build_loaders(DataConfig(dataset=data["dataset"], data_dir=data_dir,
                                         input_size=size, batch_size=n, eval_batch_size=n,
                                         train_subset=n, val_subset=n))
        x = next(iter(loaders[1]))[0]
        if x.shape[0] == n and x.shape[1] == spec["in_chans"]:
            return x
    except (InputError, KeyError, StopIteration, OSError):
        pass  # the data is not here (or not readable): a random batch checks the graph as well
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, spec["in_chans"], size, size, generator=gen)


# ---------------------------------------------------------------------- helpers
def resolve_format(out, fmt: str | None) -> str:
    """The export format: ``fmt`` if given (it must agree with the output's suffix), else the
    one the suffix implies, else ``compact``."""
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    implied = None
    if out is not None and not Path(out).expanduser().is_dir():
        implied = _BY_SUFFIX.get(Path(out).suffix.lower())
    if fmt is None:
        return implied[0] if implied else "compact"
    if implied and fmt not in implied:
        raise InputError(
            f"--format {fmt} contradicts the output name {Path(out).name} (a "
            f"{' or '.join(implied)} file); drop --format or change the -o suffix"
        )
    return fmt


def _output_path(src: Path, out, fmt: str, weights: str = "float") -> Path:
    suffix = ("" if weights == "float" else f".{weights}") + _SUFFIX[fmt]
    name = src.name.removesuffix(".th").removesuffix(".pt") + suffix
    if out is None:
        out = src.with_name(name)
    out = Path(out).expanduser()
    if out.is_dir():
        out = out / name
    if out.resolve() == src.resolve():
        raise InputError(f"output {out} would overwrite the artifact; pass another -o")
    return out


def _rounded(model, dtype: str):
    """A copy of ``model`` whose float tensors went through ``dtype`` and back."""
    import copy

    import torch

    out = copy.deepcopy(model)
    with torch.no_grad():
        for t in [*out.parameters(), *out.buffers()]:
            if t.is_floating_point():
                t.copy_(t.to(getattr(torch, dtype)))
    return out


def _max_diff(got, expected) -> float:
    if not expected.numel():
        return 0.0
    return float((got.float() - expected.float()).abs().max())

