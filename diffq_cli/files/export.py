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
"""

import contextlib
import io
import json
import warnings
from pathlib import Path

from diffq_cli.errors import InputError
from diffq_cli.fileio import atomic_write, check_writable
from diffq_cli.files.artifact import load_artifact, rebuild_model
from diffq_cli.models.factory import logits as _logits

FORMATS = ("compact", "pt2", "torchscript", "safetensors", "onnx")
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_SUFFIX = {"compact": ".compact.pt2", "pt2": ".pt2", "torchscript": ".torchscript.pt",
           "safetensors": ".safetensors", "onnx": ".onnx"}
# Formats an output name implies ("-o x.onnx"); the first is the one chosen without --format.
_BY_SUFFIX = {".safetensors": ("safetensors",), ".onnx": ("onnx",), ".ts": ("torchscript",),
              ".torchscript": ("torchscript",), ".pt2": ("compact", "pt2")}
_ONNX_HINT = "ONNX export needs the onnx extra: pip install 'diffq-cli[onnx]'"
SAMPLES = 8


def export_artifact(path, out=None, fmt: str | None = None, atol: float = 1e-4,
                    dtype: str = "fp32", activity=None) -> dict:
    """Write ``fmt`` from an artifact, load it back and compare outputs on a sample batch.

    Args:
        path: the artifact (``model.th``) written by ``diffq finetune``.
        out: output file (or an existing directory); default: next to ``path``.
        fmt: one of ``FORMATS``; None: implied by the suffix of ``out`` (``.safetensors``,
            ``.onnx``, ``.ts``/``.torchscript``; ``.pt2`` and anything else: ``compact``).
        atol: largest allowed abs difference between the file's outputs and the quantized
            model's, rebuilt from the artifact (with ``dtype``, its weights rounded to it).
        dtype: weights dtype of ``safetensors``: ``fp32``, ``fp16`` or ``bf16``.
        activity: ``activity(description)`` gives a context manager shown while the file is
            written and checked (``Reporter.activity``), entered once the inputs are checked.

    Returns:
        ``{"format", "path", "bytes", "true_mb", "max_abs_diff", "atol", "ok", "dtype",
        "dtype_diff"}``: ``ok`` is False when ``max_abs_diff`` is above ``atol`` (the CLI
        exits 1); ``dtype_diff`` is how far rounding the weights to ``dtype`` moved the
        outputs (None for fp32), for information.

    Example:
        >>> export_artifact("runs/resnet18-digits-mu0.001/model.th", "model.pt2")["ok"]
        True
    """
    import torch

    from diffq_cli.quant.summary import summarize_state

    fmt = resolve_format(out, fmt)
    if atol < 0:
        raise InputError(f"--atol must be >= 0, got {atol:g}")
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}'; choose one of: fp32, fp16, bf16")
    if dtype != "fp32" and fmt != "safetensors":
        raise InputError(f"--dtype {dtype} applies to --format safetensors only")
    if fmt == "onnx":
        _need_onnx()
    out = _output_path(Path(path), out, fmt)
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
        writer, runner = _FORMATS[fmt]
        atomic_write(out, writer(model, artifact, x, dtype))
        with torch.no_grad():
            diff = _max_diff(_logits(runner(out, artifact, x)), expected)
    return {"format": fmt, "path": str(out), "bytes": out.stat().st_size,
            "true_mb": summarize_state(artifact["state"])["true_mb"], "max_abs_diff": diff,
            "atol": float(atol), "ok": diff <= atol, "dtype": dtype, "dtype_diff": dtype_diff}


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


# ---------------------------------------------------------------------- writers and runners
def _compact_bytes(model, artifact, x, dtype) -> bytes:
    from diffq_cli.files.compact import CompactModel

    # Module paths would name the wrapper's internals: drop them too to keep the file small.
    return _program_bytes(CompactModel(model, artifact["state"]).eval(), x, ("nn_module_stack",))


def _pt2_bytes(model, artifact, x, dtype) -> bytes:
    return _program_bytes(model, x)


def _program_bytes(module, x, drop=()) -> bytes:
    import torch

    try:
        try:
            batch = ({0: torch.export.Dim("batch")},)
            program = torch.export.export(module, (x,), dynamic_shapes=batch)
        except Exception:  # noqa: BLE001 - some models only export with a fixed batch size
            program = torch.export.export(module, (x,))
    except Exception as err:  # noqa: BLE001 - any tracing failure: report it on one line
        raise InputError(f"torch.export could not trace the model ({_first_line(err)}); "
                         "try --format torchscript or safetensors") from None
    for node in program.graph.nodes:  # this machine's source paths: noise in the file
        for key in ("stack_trace", "torch_fn", *drop):
            node.meta.pop(key, None)
    program.example_inputs = None  # the sample images are user data, not part of the model
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def _run_program(out, artifact, x):
    import torch

    with open(out, "rb") as f:  # a file object: torch warns about paths not ending in .pt2
        return torch.export.load(f).module()(x)


def _torchscript_bytes(model, artifact, x, dtype) -> bytes:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():  # torch.jit warns that it is deprecated: the user chose it
        warnings.simplefilter("ignore", FutureWarning)
        try:
            torch.jit.save(torch.jit.trace(model, x, check_trace=False), buf)
        except Exception as err:  # noqa: BLE001 - tracing failures come in many types
            raise InputError(f"torch.jit.trace failed ({_first_line(err)}); "
                             "try --format pt2") from None
    return buf.getvalue()


def _run_torchscript(out, artifact, x):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(out), map_location="cpu")(x)


def _safetensors_bytes(model, artifact, x, dtype) -> bytes:
    import torch
    from safetensors.torch import save

    target = getattr(torch, DTYPES[dtype])
    tensors = {k: (v.to(target) if v.is_floating_point() else v).detach().clone().contiguous()
               for k, v in model.state_dict().items()}
    meta = {"format": "diffq_cli.safetensors", "dtype": dtype,
            "model": json.dumps(artifact["model"]), "data": json.dumps(artifact.get("data") or {}),
            "metrics": json.dumps(artifact.get("metrics") or {}, default=str)}
    return save(tensors, metadata=meta)


def _run_safetensors(out, artifact, x):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from diffq_cli.models.factory import create_model

    with safe_open(str(out), framework="pt") as f:
        spec = json.loads(f.metadata()["model"])
    model = create_model(**spec)
    model.load_state_dict(load_file(str(out)))
    return model.eval()(x)


def _need_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise InputError(_ONNX_HINT) from None


def _onnx_bytes(model, artifact, x, dtype) -> bytes:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (x,), input_names=["x"], output_names=["logits"],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},),
                                        dynamo=True, verbose=False)
    except Exception as err:  # noqa: BLE001 - exporter failures come in many types
        raise InputError(f"ONNX export failed ({_first_line(err)}); try --format pt2") from None
    return program.model_proto.SerializeToString()


def _run_onnx(out, artifact, x):
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


_FORMATS = {
    "compact": (_compact_bytes, _run_program),
    "pt2": (_pt2_bytes, _run_program),
    "torchscript": (_torchscript_bytes, _run_torchscript),
    "safetensors": (_safetensors_bytes, _run_safetensors),
    "onnx": (_onnx_bytes, _run_onnx),
}


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


def _output_path(src: Path, out, fmt: str) -> Path:
    name = src.name.removesuffix(".th").removesuffix(".pt") + _SUFFIX[fmt]
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


def _first_line(err) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
