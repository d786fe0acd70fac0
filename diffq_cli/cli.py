"""The ``diffq`` command line: parse, call the library, render. The only Typer importer.

Exit codes: 0 ok; 1 a gate failed (``--max-mb``, ``--min-acc``, export tolerance) or training
diverged; 2 bad usage or input. Heavy modules are imported inside the commands so that
``diffq --help`` answers fast.
"""

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

from diffq_cli import __version__
from diffq_cli.errors import GateError, InputError, TrainingError

app = typer.Typer(
    name="diffq",
    help=(
        "Quantization-aware fine-tuning with DiffQ (differentiable model compression).\n\n"
        "Examples:\n\n"
        "\b\n"  # click: keep the example lines as they are (no re-wrapping)
        "  diffq finetune --model resnet18 --mu 1e-3\n"
        "  diffq finetune --mu 1e-3 --mu 0.1 --mu 1          # trade-off sweep, one table\n"
        "  diffq finetune --target-mb 4 --baseline qat       # fit 4 MB, compare with QAT\n"
        "  diffq finetune --recipe fashion-mnist-resnet18 optim.lr=0.02\n"
        "  diffq size runs/resnet18-digits-mu0.001/model.th --max-mb 12\n"
        "  diffq eval runs/resnet18-digits-mu0.001/model.th --min-acc 90\n"
        "  diffq export runs/resnet18-digits-mu0.001/model.th -o model.pt2\n"
        "  torchrun --nproc_per_node 2 -m diffq_cli finetune --recipe cifar10-resnet18"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document to stdout.")]
FileArg = Annotated[
    Path, typer.Argument(help="An artifact (model.th), a quantized state or a checkpoint.")
]


def _fail(code: int, message: str):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def handle_errors(fn):
    """Turns our exceptions into one line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as err:
            _fail(2, str(err))
        except (GateError, TrainingError) as err:
            _fail(1, str(err))
        except KeyboardInterrupt:
            _fail(130, "interrupted; rerun with --resume to continue from the last checkpoint")

    return wrapper


def _reporter(json_mode: bool):
    from diffq_cli.report import Reporter

    return Reporter(json_mode=json_mode)


def _version(value: bool):
    if value:
        typer.echo(f"diffq {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
):
    """DiffQ quantization-aware fine-tuning."""


@app.command(context_settings={"allow_extra_args": False})
@handle_errors
def finetune(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Recipe overrides key=value, e.g. optim.lr=0.1.")
    ] = None,
    recipe: Annotated[
        str | None, typer.Option(help="Recipe name or YAML path (default: default).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="timm or torchvision model name.")] = None,
    source: Annotated[str | None, typer.Option(help="auto | timm | torchvision.")] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="digits | mnist | fashion-mnist | cifar10 | cifar100 | imagefolder | idx."
        ),
    ] = None,
    data_dir: Annotated[str | None, typer.Option(help="Dataset directory.")] = None,
    download: Annotated[
        bool | None, typer.Option("--download", help="Let torchvision download the dataset.")
    ] = None,
    mu: Annotated[
        list[float] | None, typer.Option(help="Size penalty; repeat for a trade-off sweep.")
    ] = None,
    target_mb: Annotated[
        list[float] | None,
        typer.Option(
            "--target-mb",
            help="Size budget in MB (true size); mu adapts to meet it. Repeatable; "
            "exclusive with --mu.",
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="none | ptq (default: uniform post-training rows) | qat (also train uniform "
            "QAT at the width nearest each result)."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per mu.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Cap on optimizer steps per mu.")] = None,
    output: Annotated[
        str | None, typer.Option(help="Run directory (default runs/<model>-<dataset>-mu<mu>).")
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="Local float checkpoint (.pt/.pth/.safetensors).")
    ] = None,
    pretrained: Annotated[
        bool | None,
        typer.Option(
            "--pretrained", help="Start from the library's pretrained weights (downloads)."
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N.")] = None,
    amp: Annotated[
        str | None, typer.Option(help="none | bf16 | fp16 mixed precision (fp16: CUDA only).")
    ] = None,
    channels_last: Annotated[
        bool | None, typer.Option("--channels-last", help="Channels-last memory format.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier run in the run directory.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run directory's checkpoint.")
    ] = False,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the resolved recipe and exit.")
    ] = False,
    json_out: JsonOpt = False,
):
    """Fine-tune a model with DiffQ and write a quantized artifact (model.th)."""
    from diffq_cli.recipe import dump_recipe, load_recipe

    if mu is not None and any(m < 0 for m in mu):
        raise InputError(f"--mu must be >= 0, got {min(mu):g}")
    flags = {
        "model.name": model,
        "model.source": source,
        "model.weights": weights,
        "model.pretrained": pretrained,
        "data.dataset": dataset,
        "data.data_dir": data_dir,
        "data.download": download,
        "train.mu": list(mu) if mu else None,
        "train.target_mb": list(target_mb) if target_mb else None,
        "train.baseline": baseline,
        "train.epochs": epochs,
        "train.max_steps": max_steps,
        "train.device": device,
        "train.amp": amp,
        "train.channels_last": channels_last,
        "train.seed": seed,
        "output": output,
    }
    resolved = load_recipe(recipe, overrides or [], flags)
    if print_config:
        typer.echo(dump_recipe(resolved), nl=False)
        return
    from diffq_cli.finetune import finetune as run

    reporter = _reporter(json_out)
    summary = run(resolved, reporter, resume=resume, overwrite=overwrite)
    if json_out:
        reporter.emit_json(summary)


@app.command()
@handle_errors
def size(
    file: FileArg,
    max_mb: Annotated[
        float | None, typer.Option(help="Exit 1 when the file on disk is larger than this (MB).")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Draw the learned bit widths per layer to this SVG.")
    ] = None,
    json_out: JsonOpt = False,
):
    """Report the sizes of an artifact, a quantized state or a float checkpoint."""
    from diffq_cli.inspect import inspect_file

    if max_mb is not None and max_mb < 0:
        raise InputError(f"--max-mb must be >= 0, got {max_mb:g}")
    summary = inspect_file(file)
    if plot is not None:
        _plot_bits(file, plot)
    reporter = _reporter(json_out)
    if json_out:
        reporter.emit_json(summary)
    else:
        reporter.size_table(summary)
        if summary["layers"]:
            reporter.layer_table(summary["layers"], "Per layer")
    if max_mb is not None and summary["file_bytes"] / 2**20 > max_mb:
        raise GateError(
            f"{file} is {summary['file_bytes'] / 2**20:.3f} MB, over --max-mb {max_mb:g}"
        )


def _plot_bits(file: Path, plot: Path) -> None:
    from diffq_cli.artifact import read_file

    kind, obj = read_file(file)
    state = obj["state"] if kind == "artifact" else obj
    if kind == "float" or not state.get("quantized"):
        raise InputError(f"{file} holds no quantized tensor: nothing to draw in {plot}")
    from diffq_cli.plots import bits_svg

    bits_svg(plot, state, str(file))


@app.command("eval")
@handle_errors
def eval_(
    file: FileArg,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset (default: the one the artifact records).")
    ] = None,
    data_dir: Annotated[str | None, typer.Option(help="Dataset directory.")] = None,
    min_acc: Annotated[
        float | None, typer.Option(help="Exit 1 when accuracy (%) is below this.")
    ] = None,
    json_out: JsonOpt = False,
):
    """Rebuild the model from an artifact alone and report its quantized accuracy."""
    from diffq_cli.evaluate import evaluate_artifact

    if min_acc is not None and not 0 <= min_acc <= 100:
        raise InputError(f"--min-acc is a percentage between 0 and 100, got {min_acc:g}")
    result = evaluate_artifact(file, dataset=dataset, data_dir=data_dir)
    reporter = _reporter(json_out)
    if json_out:
        reporter.emit_json(result)
    else:
        reporter.kv_table(result, "Evaluation")
    if min_acc is not None and result["accuracy"] < min_acc:
        raise GateError(f"accuracy {result['accuracy']:.2f}% is below --min-acc {min_acc:g}")


@app.command()
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
    atol: Annotated[
        float, typer.Option(help="Max abs output difference allowed vs the quantized model.")
    ] = 1e-4,
    json_out: JsonOpt = False,
):
    """Export an artifact to a deployable file, checked against the quantized model."""
    from diffq_cli.export import export_artifact

    result = export_artifact(file, out, fmt=format, atol=atol, dtype=dtype)
    reporter = _reporter(json_out)
    if json_out:
        reporter.emit_json(result)
    else:
        reporter.kv_table(result, "Export")
    if not result["ok"]:
        raise GateError(
            f"exported model differs from the quantized one by {result['max_abs_diff']:.3g} "
            f"(> --atol {atol:g})"
        )


@app.command()
@handle_errors
def recipes(name: Annotated[str | None, typer.Argument(help="Print this recipe.")] = None):
    """List the shipped recipes, or print one."""
    from diffq_cli.recipe import list_recipes, recipe_text

    if name:
        typer.echo(recipe_text(name), nl=False)
        return
    for rname, desc in list_recipes():
        typer.echo(f"{rname:28s} {desc}")


@app.command()
@handle_errors
def models(
    pattern: Annotated[str | None, typer.Argument(help="fnmatch pattern, e.g. 'resnet*'.")] = None,
    source: Annotated[str, typer.Option(help="auto | timm | torchvision.")] = "auto",
):
    """List model names from torchvision and timm."""
    from diffq_cli.models import list_models

    names = list_models(pattern, source)
    if not names:
        raise InputError(f"no model matches {pattern!r}; try a wider pattern such as 'resnet*'")
    for name, src in names:
        typer.echo(f"{name:40s} {src}")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="diffq")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
