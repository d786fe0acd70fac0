"""``diffq size``, ``diffq eval`` and ``diffq export``: commands on an artifact file."""

from pathlib import Path
from typing import Annotated

import typer

from diffq_cli.cli.common import (
    FileArg,
    JsonOpt,
    at_least_1,
    gate,
    handle_errors,
    make_reporter,
)
from diffq_cli.errors import GateError, InputError


@handle_errors
def size(
    file: FileArg,
    max_mb: Annotated[
        float | None,
        typer.Option(help="Exit 1 when the file on disk (or with --size true, the true "
                     "quantized size) is larger than this (MiB, 2^20 bytes)."),
    ] = None,
    size_kind: Annotated[
        str,
        typer.Option("--size", metavar="KIND",
                     help="file (default: bytes on disk) | true (bit-packed size): what "
                          "--max-mb checks, as `finetune --size`."),
    ] = "file",
    plot: Annotated[
        Path | None, typer.Option(help="Draw the learned bit widths per layer to this SVG.")
    ] = None,
    top: Annotated[
        int | None, typer.Option(metavar="N", help="Show only the N largest layers.")
    ] = None,
    no_layers: Annotated[
        bool, typer.Option("--no-layers", help="Leave out the per-layer table (and JSON list).")
    ] = False,
    json_out: JsonOpt = False,
):
    """Report the sizes of an artifact, a quantized state or a float checkpoint."""
    from diffq_cli.files.inspect import inspect_file

    at_least_1("--top", top)
    if max_mb is not None and max_mb < 0:
        raise InputError(f"--max-mb must be >= 0, got {max_mb:g}")
    if size_kind not in ("file", "true"):
        raise InputError(f"--size must be file or true, got {size_kind!r}")
    summary = inspect_file(file)
    if no_layers:
        summary["layers"] = []
    elif top is not None:
        summary["layers"] = sorted(summary["layers"], key=lambda r: -(r.get("mb") or 0))[:top]
    from diffq_cli.units import mib

    measured = mib(summary["file_bytes"]) if size_kind == "file" else summary.get("true_mb")
    if max_mb is not None and measured is None:
        raise InputError(f"{file} has no true quantized size (a float checkpoint); "
                         "check it with --size file")
    passed = max_mb is None or measured <= max_mb
    summary["gate"] = gate("max_mb", max_mb, passed)
    if summary["gate"]:
        summary["gate"]["size"] = size_kind
    if plot is not None:
        _plot_bits(file, plot)
    reporter = make_reporter(json_out)
    if json_out:
        reporter.emit_json(summary)
    else:
        reporter.size_table(summary)
        if summary["layers"]:
            title = "Per layer" if top is None else f"Largest {len(summary['layers'])} layers"
            reporter.layer_table(summary["layers"], title)
    if not passed:
        what = "" if size_kind == "file" else " (true size)"
        raise GateError(f"{file} is {measured:.3f} MiB{what}, over --max-mb {max_mb:g} MiB")


def _plot_bits(file: Path, plot: Path) -> None:
    from diffq_cli.files.artifact import read_file

    kind, obj = read_file(file)
    state = obj["state"] if kind == "artifact" else obj
    if kind == "float" or not state.get("quantized"):
        raise InputError(f"{file} holds no quantized tensor: nothing to draw in {plot}")
    from diffq_cli.files.plots import bits_svg

    bits_svg(plot, state, str(file))


@handle_errors
def eval_(
    file: FileArg,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset (default: the one the artifact records).")
    ] = None,
    data_dir: Annotated[str | None, typer.Option(help="Dataset directory.")] = None,
    device: Annotated[
        str, typer.Option(metavar="NAME", help="auto | cpu | cuda | cuda:N | mps.")
    ] = "cpu",
    batch_size: Annotated[int, typer.Option(metavar="N", help="Evaluation batch size.")] = 256,
    val_subset: Annotated[
        int | None,
        typer.Option(metavar="N", help="Evaluate on the first N validation images only."),
    ] = None,
    min_acc: Annotated[
        float | None, typer.Option(help="Exit 1 when accuracy (%) is below this.")
    ] = None,
    json_out: JsonOpt = False,
):
    """Rebuild the model from an artifact alone and report its quantized accuracy."""
    at_least_1("--batch-size", batch_size)
    at_least_1("--val-subset", val_subset)
    from diffq_cli.config.schema import DEVICES, is_device

    if not is_device(device):
        raise InputError(f"--device must be {DEVICES}; got {device!r}")
    from diffq_cli.run.distributed import resolve_device
    from diffq_cli.run.evaluate import evaluate_artifact

    if min_acc is not None and not 0 <= min_acc <= 100:
        raise InputError(f"--min-acc is a percentage between 0 and 100, got {min_acc:g}")
    reporter = make_reporter(json_out)
    result = evaluate_artifact(
        file,
        dataset=dataset,
        data_dir=data_dir,
        batch_size=batch_size,
        device=resolve_device(device),
        val_subset=val_subset,
        activity=reporter.activity,  # a spinner, or start/end lines on stderr
    )
    passed = min_acc is None or result["accuracy"] >= min_acc
    if json_out:
        reporter.emit_json({**result, "gate": gate("min_acc", min_acc, passed)})
    else:
        reporter.eval_table(result)
    if not passed:
        raise GateError(f"accuracy {result['accuracy']:.2f}% is below --min-acc {min_acc:g}")


@handle_errors
def export(
    file: FileArg,
    out: Annotated[Path, typer.Option("-o", "--output", help="Output file.")],
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="compact | torchscript | pt2 | safetensors | onnx (default: from the -o "
            "suffix: .safetensors, .onnx, .ts/.torchscript; otherwise compact).",
        ),
    ] = None,
    dtype: Annotated[str, typer.Option(help="fp32 | fp16 | bf16 (safetensors).")] = "fp32",
    weights: Annotated[
        str,
        typer.Option(
            metavar="float|int|qdq",
            help="int: integer weights with per-channel scales, dequantized in the graph "
            "(pt2 and onnx; a .pt2 output then means pt2). qdq: onnx with DequantizeLinear "
            "nodes, for int8 runtimes.",
        ),
    ] = "float",
    atol: Annotated[
        float, typer.Option(help="Max abs output difference allowed vs the quantized model.")
    ] = 1e-4,
    json_out: JsonOpt = False,
):
    """Export an artifact to a deployable file, checked against the quantized model."""
    from diffq_cli.files.export import export_artifact

    reporter = make_reporter(json_out)
    result = export_artifact(
        file, out, fmt=format, atol=atol, dtype=dtype, activity=reporter.activity,
        weights=weights,
    )
    if json_out:
        reporter.emit_json({**result, "gate": gate("atol", atol, result["ok"])})
    else:
        reporter.export_table(result)
    if not result["ok"]:
        raise GateError(
            f"exported model differs from the quantized one by {result['max_abs_diff']:.1e} "
            f"(> --atol {atol:g})"
        )
