"""The export formats: per format, a writer (model -> file bytes) and a runner (file -> outputs
on a batch), for ``export.py`` to check every file against the quantized model. See
``export.py`` for what each format holds and when to pick it."""

import io
import json
import warnings

from diffq_cli.errors import InputError, first_line

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_ONNX_HINT = "ONNX export needs the onnx extra: pip install 'diffq-cli[onnx]'"


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
        raise InputError(f"torch.export could not trace the model ({first_line(err)}); "
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
            raise InputError(f"torch.jit.trace failed ({first_line(err)}); "
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


def need_onnx():
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
        raise InputError(f"ONNX export failed ({first_line(err)}); try --format pt2") from None
    return program.model_proto.SerializeToString()


def _run_onnx(out, artifact, x):
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


WRITERS = {
    "compact": (_compact_bytes, _run_program),
    "pt2": (_pt2_bytes, _run_program),
    "torchscript": (_torchscript_bytes, _run_torchscript),
    "safetensors": (_safetensors_bytes, _run_safetensors),
    "onnx": (_onnx_bytes, _run_onnx),
}
