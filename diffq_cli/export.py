"""Artifact -> deployable files, each loaded back and checked against the quantized model.

Formats (``FORMATS``):

- ``compact`` (default, ``.pt2``): a ``torch.export`` program that keeps the weights packed.
  The quantized levels are stored as uint8 bit planes (one stream per bit width, see
  ``quant/pack.py``) plus the packed per-group widths and one range per tensor, and the graph
  unpacks and dequantizes them before running the network. Load it with plain PyTorch:
  ``torch.export.load(path).module()(x)``, no diffq_cli needed. Why torch.export: it is
  PyTorch's supported, versioned serialization for programs, while ``torch.jit`` (script,
  trace, save *and* load) warns as deprecated since torch 2.14. The price: an exported program
  cannot run code once at load time, so the dequantization runs on every call (measured on
  resnet18, 2 CPU cores: about 0.1 s per call; noticeable for single images, small next to a
  batch of 64). Use ``pt2`` when per-call latency matters more than file size.
- ``pt2``: ``torch.export`` program of the dequantized float model (4-8x larger).
- ``torchscript``: ``torch.jit.trace`` of the dequantized model (deprecated by PyTorch; for
  runtimes that still need it).
- ``safetensors``: the dequantized ``state_dict`` (fp32, fp16 or bf16) for ``load_state_dict``
  into ``create_model(**spec)``; the metadata holds the model spec and data spec as JSON.
- ``onnx``: the dequantized graph, with the optional extra ``diffq-cli[onnx]``.
"""

import io
import json
import warnings
from pathlib import Path

from diffq_cli.artifact import atomic_write, read_file, rebuild_model
from diffq_cli.errors import InputError
from diffq_cli.evaluate import logits as _logits

FORMATS = ("compact", "pt2", "torchscript", "safetensors", "onnx")
DTYPES = ("fp32", "fp16", "bf16")
# fp32 exports match to float rounding; fp16/bf16 weights move the outputs by their precision.
DEFAULT_ATOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-1}
_SUFFIX = {"compact": ".compact.pt2", "pt2": ".pt2", "torchscript": ".torchscript.pt",
           "safetensors": ".safetensors", "onnx": ".onnx"}
_ONNX_HINT = "ONNX export needs the onnx extra: pip install 'diffq-cli[onnx]'"
SAMPLES = 8


def export_artifact(path, out=None, fmt: str = "compact", atol: float | None = None,
                    dtype: str = "fp32") -> dict:
    """Write ``fmt`` from an artifact, load it back and compare outputs on a sample batch.

    Args:
        path: the artifact (``model.th``) written by ``diffq finetune``.
        out: output file (or an existing directory); default: next to ``path``.
        fmt: one of ``FORMATS``.
        atol: largest allowed abs difference of the outputs against the quantized model
            rebuilt from the artifact (default: ``DEFAULT_ATOL[dtype]``).
        dtype: weights dtype of ``safetensors`` (``fp32``, ``fp16``, ``bf16``).

    Returns:
        ``{"format", "path", "bytes", "true_mb", "max_abs_diff", "atol", "ok"}``; ``ok`` is False
        when the difference is above ``atol`` (the CLI exits 1).

    Example:
        >>> export_artifact("runs/resnet18-digits-mu0.001/model.th", "model.pt2")["ok"]
        True
    """
    import torch

    from diffq_cli.quant.summary import summarize_state

    if fmt not in FORMATS:
        raise InputError(f"unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}'; choose one of: {', '.join(DTYPES)}")
    if dtype != "fp32" and fmt != "safetensors":
        raise InputError(f"--dtype {dtype} applies to --format safetensors only")
    if fmt == "onnx":
        _need_onnx()
    atol = DEFAULT_ATOL[dtype] if atol is None else float(atol)
    artifact = load_artifact(path)
    out = _output_path(Path(path), out, fmt)
    model = rebuild_model(artifact)
    x = sample_batch(artifact)
    with torch.no_grad():
        expected = _logits(model(x))
    writer, runner = _FORMATS[fmt]
    atomic_write(out, writer(model, artifact, x, dtype))
    with torch.no_grad():
        got = _logits(runner(out, artifact, x))
    diff = float((got.float() - expected.float()).abs().max()) if expected.numel() else 0.0
    return {"format": fmt, "path": str(out), "bytes": out.stat().st_size,
            "true_mb": summarize_state(artifact["state"])["true_mb"], "max_abs_diff": diff,
            "atol": atol, "ok": diff <= atol}


def load_artifact(path) -> dict:
    """The artifact at ``path``; InputError for anything else (states, checkpoints, junk)."""
    kind, obj = read_file(path)
    if kind != "artifact":
        what = "quantized state" if kind == "state" else "float checkpoint"
        raise InputError(f"{path} is a {what}, not an artifact; pass the model.th written by "
                         "diffq finetune")
    return obj


def sample_batch(artifact: dict, n: int = SAMPLES):
    """``n`` validation images of the artifact's dataset, or a seeded random batch offline."""
    import torch

    from diffq_cli.data import DataSpec, build_loaders

    data, spec = artifact.get("data") or {}, artifact["model"]
    size = int(data.get("input_size") or spec.get("input_size") or 32)
    try:
        data_dir = ((artifact.get("recipe") or {}).get("data") or {}).get("data_dir")
        loaders = build_loaders(DataSpec(dataset=data["dataset"], data_dir=data_dir,
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
    from diffq_cli.compact import CompactModel

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

    target = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    tensors = {k: (v.to(target) if v.is_floating_point() else v).detach().clone().contiguous()
               for k, v in model.state_dict().items()}
    meta = {"format": "diffq_cli.safetensors", "dtype": dtype,
            "model": json.dumps(artifact["model"]), "data": json.dumps(artifact.get("data") or {}),
            "metrics": json.dumps(artifact.get("metrics") or {}, default=str)}
    return save(tensors, metadata=meta)


def _run_safetensors(out, artifact, x):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from diffq_cli.models import create_model

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


def _first_line(err) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
