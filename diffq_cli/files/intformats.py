"""``--weights int`` writers: ``pt2`` and ``onnx`` files whose quantized weights are integers.

Each writer returns ``(bytes, info)``: ``info`` counts the tensors per storage dtype, the
near-exact ones and those left float (``intweights.int_summary``). The files are run and checked
against the quantized model like every export (``export.py``, ``--atol``).

- ``pt2``: ``torch.export`` of ``intweights.IntModel``: int8 (uint8 / int16) levels and float32
  scales per output row as buffers, one multiply (plus an add on the ``minmax``/``channel``
  grids) per layer in the graph. Loads with ``torch.export.load(f).module()``.
- ``onnx``: the float export (``formats``), then each quantized initializer read by ``Conv``,
  ``Gemm`` or ``MatMul`` is replaced by its integers, a ``Cast`` to float and a ``Mul`` by the
  scales per output channel (axis 0, or 1 for a weight the exporter stored transposed, found by
  value; ``Add`` of the per-row ``low`` after it on the ``minmax``/``channel`` grids).
  onnxruntime folds these constants into one float weight when the session loads: exact, float
  speed, the file keeps the integers. ``qdq=True`` (``--weights qdq``) writes a
  ``DequantizeLinear`` per output channel instead for the weights of ``Conv`` and ``Gemm``, the
  form int8 runtimes (TensorRT, onnxruntime's QDQ kernels) recognise; onnxruntime's CPU session
  runs it on every call (2.5x the float latency on resnet18) unless told to fold it
  (``session.disable_quant_qdq=1``). The exporter folds BatchNorm into the preceding conv's weight,
  which multiplies each output row by a factor: the factor is measured per row against the
  restored weight and moved into the scale (and offset), and the result is checked against the
  folded weight (a few float32 ulps) — a tensor that does not match stays float. int16 needs
  opset 21; at the exporter's opset 20 such tensors stay float. ``MatMul`` weights
  (transformers' linear layers) keep the ``Cast``/``Mul`` form with ``qdq`` too: onnxruntime
  turns ``DequantizeLinear`` -> ``MatMul`` into an int8 MatMul on dynamically quantized
  activations (lossy: 4e-3 off on test_vit).
"""

import numpy as np

from diffq_cli.files.formats import _onnx_bytes, _program_bytes
from diffq_cli.files.intweights import IntModel, int_summary, int_weights

_ONNX_INT = {"uint8": 2, "int8": 3, "int16": 5}  # onnx.TensorProto codes
# onnxruntime (1.32, extended optimisations) rewrites DequantizeLinear -> MatMul into a MatMul
# on dynamically quantized int8 activations: 4e-3 off on test_vit. Conv and Gemm stay float
# after a DequantizeLinear, so only their weights get one (qdq); MatMul weights get Cast/Mul.
_DEQUANTIZED_FOR = {"Conv", "Gemm"}
_CAST_FOR = {"MatMul"}
_ULPS = 2.0**-20  # allowed error of the refolded scale, relative to the tensor's largest value


def pt2_int_bytes(model, artifact, x, dtype, qdq=False):
    state = artifact["state"]
    mapped = int_weights(state)
    data = _program_bytes(IntModel(model, state, mapped).eval(), x, ("nn_module_stack",))
    return data, int_summary(state, mapped)


def onnx_int_bytes(model, artifact, x, dtype, qdq=False):
    import onnx
    from onnx import numpy_helper

    state = artifact["state"]
    proto = onnx.load_from_string(_onnx_bytes(model, artifact, x, dtype))
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                default=0)
    mapped = {name: w for name, w in int_weights(state).items()
              if opset >= 21 or str(w["q"].dtype) != "torch.int16"}
    params = dict(model.named_parameters(remove_duplicate=False))  # any alias a state uses
    restored = {name: params[name].detach().numpy() for name in mapped}
    graph, done = proto.graph, {}
    users = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.op_type)
    for init in list(graph.initializer):
        readers = users.get(init.name)
        if not readers or not readers <= _DEQUANTIZED_FOR | _CAST_FOR:
            continue
        cast = not (qdq and readers <= _DEQUANTIZED_FOR)
        folded = numpy_helper.to_array(init)
        # By name first; the exporter renames the constants it transforms (a linear layer's
        # weight becomes a transposed MatMul constant ``val_N``): those are found by value.
        names = [init.name] if init.name in mapped else [
            n for n, r in restored.items() if folded.size == r.size and folded.ndim == r.ndim]
        for name in names:
            fitted = None if name in done else _fit(mapped[name], restored[name], folded)
            if fitted is not None:
                nodes, inits = _dequantize_nodes(init.name, *fitted, cast=cast)
                graph.initializer.remove(init)
                graph.initializer.extend(inits)
                for node in reversed(nodes):
                    graph.node.insert(0, node)
                done[name] = mapped[name]
                break
    return proto.SerializeToString(), int_summary(state, done)


def _fit(w: dict, restored: np.ndarray, folded: np.ndarray):
    """(q, scale, offset, axis) giving ``folded`` (an initializer of the exporter) from ``w``,
    the integer form of ``restored``, as is or transposed; None when no factor per output row
    (a folded BatchNorm) makes them agree to float32 rounding."""
    if folded.shape == restored.shape:
        fitted = _fit_rows(w, restored, folded)
        if fitted is not None:
            return (*fitted, 0)
    if folded.ndim == 2 and folded.shape == restored.shape[::-1]:
        fitted = _fit_rows(w, restored, folded.T)  # a transposed matmul weight
        if fitted is not None:
            return fitted[0].T, fitted[1], fitted[2], 1
    return None


def _fit_rows(w: dict, restored: np.ndarray, folded: np.ndarray):
    q, scale = w["q"].numpy(), w["scale"].numpy().astype(np.float64)
    offset = None if w["offset"] is None else w["offset"].numpy().astype(np.float64)
    rows = scale.shape[0] if q.ndim > 1 else 1
    r = restored.reshape(rows, -1).astype(np.float64)
    f = folded.reshape(rows, -1).astype(np.float64)
    norm = (r * r).sum(1)
    factor = np.where(norm > 0, (r * f).sum(1) / np.where(norm > 0, norm, 1), 1.0)
    scale = (scale * factor).astype(np.float32)
    offset = None if offset is None else (offset * factor).astype(np.float32)
    values = q.reshape(rows, -1).astype(np.float32) * scale[:, None]
    if offset is not None:
        values = values + offset[:, None]
    top = float(np.abs(f).max()) if f.size else 0.0
    if f.size and float(np.abs(values - f).max()) > _ULPS * max(top, 1e-30):
        return None
    return q, scale, offset


def _dequantize_nodes(name: str, q, scale, offset, axis: int, cast: bool = False):
    """``DequantizeLinear`` (or, with ``cast``, ``Cast`` + ``Mul``) (+ ``Add``) nodes writing
    ``name`` and their initializers."""
    from onnx import TensorProto, helper, numpy_helper

    per_tensor = q.ndim < 2
    shape = [1] * q.ndim
    shape[axis if not per_tensor else 0] = -1
    inits = [numpy_helper.from_array(np.ascontiguousarray(q), f"{name}__q")]
    target = name if offset is None else f"{name}__scaled"
    if cast:  # broadcast per output row along ``axis``
        row = scale[0] if per_tensor else np.ascontiguousarray(scale.reshape(shape))
        inits.append(numpy_helper.from_array(row, f"{name}__scale"))
        nodes = [helper.make_node("Cast", [f"{name}__q"], [f"{name}__float"],
                                  to=TensorProto.FLOAT, name=f"{name}__cast"),
                 helper.make_node("Mul", [f"{name}__float", f"{name}__scale"], [target],
                                  name=f"{name}__dequantize")]
    else:
        inits.append(numpy_helper.from_array(scale[0] if per_tensor else scale,
                                             f"{name}__scale"))
        zero = (np.zeros((), dtype=q.dtype) if per_tensor
                else np.zeros(scale.shape, dtype=q.dtype))
        inits.append(numpy_helper.from_array(zero, f"{name}__zero"))
        attrs = {} if per_tensor else {"axis": axis}
        nodes = [helper.make_node("DequantizeLinear", [f"{name}__q", f"{name}__scale",
                                                       f"{name}__zero"], [target],
                                  name=f"{name}__dequantize", **attrs)]
    if offset is not None:
        low = offset[0] if per_tensor else offset.reshape(shape)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(low), f"{name}__low"))
        nodes.append(helper.make_node("Add", [target, f"{name}__low"], [name],
                                      name=f"{name}__offset"))
    return nodes, inits


INT_WRITERS = {"pt2": pt2_int_bytes, "onnx": onnx_int_bytes}
