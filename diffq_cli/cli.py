"""The ``diffq`` command line: parse, call the library, render. The only Typer importer.

Exit codes: 0 ok; 1 a gate failed (``--max-mb``, ``--min-acc``, export tolerance) or training
diverged; 2 bad usage or input. Heavy modules are imported inside the commands so that
``diffq --help`` answers fast.
"""

import functools
import json
import re
import sys
from pathlib import Path
from typing import Annotated

import typer
import typer.core

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
        "  diffq finetune --target-mb 4 --baseline qat       # fit 4 MiB, compare with QAT\n"
        "  diffq finetune --recipe fashion-mnist-resnet18 optim.lr=0.02\n"
        "  diffq size runs/resnet18-digits-mu0.001/model.th --max-mb 12\n"
        "  diffq eval runs/resnet18-digits-mu0.001/model.th --min-acc 90\n"
        "  diffq export runs/resnet18-digits-mu0.001/model.th -o model.pt2\n"
        "  torchrun --nproc_per_node 2 -m diffq_cli finetune --recipe cifar10-resnet18"
    ),
    no_args_is_help=True,
    add_completion=True,  # Typer's --install-completion / --show-completion
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document to stdout.")]
FileArg = Annotated[
    Path, typer.Argument(help="An artifact (model.th), a quantized state or a checkpoint.")
]


# Options whose help shows the default recipe's value: help text -> recipe key. The recipe is
# read when help is shown (``_RecipeHelp``), not at import: a broken recipe is then an error
# that names it, and ``diffq size`` never pays for it.
_HELP_KEYS: dict[str, str] = {}


def _h(text: str, key: str) -> str:
    """``text``, marked to get the default recipe's value for ``key`` when help is shown."""
    _HELP_KEYS[text] = key
    return text


def _with_default(text: str, value) -> str:
    if value is None or value == () or value is False:
        return text
    if isinstance(value, (list, tuple)):
        value = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    elif isinstance(value, float):
        value = f"{value:g}"
    return f"{text} [recipe default: {value}]"


class _RecipeHelp(typer.core.TyperCommand):
    """A command whose ``--help`` adds the default recipe's values to the marked options."""

    def format_help(self, ctx, formatter):
        from diffq_cli.recipe import default_values

        try:
            defaults = default_values()
        except InputError as err:
            _fail(2, str(err))
        for param in self.params:
            base = getattr(param, "_diffq_help", param.help)
            if base in _HELP_KEYS:
                param._diffq_help = base  # formatting twice must not add the value twice
                param.help = _with_default(base, defaults.get(_HELP_KEYS[base]))
        return super().format_help(ctx, formatter)


def _gate(name: str, limit: float | None, passed: bool) -> dict | None:
    """The JSON record of a gate, or None when the user asked for none."""
    return None if limit is None else {name: limit, "passed": bool(passed)}


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


@app.command(cls=_RecipeHelp, context_settings={"allow_extra_args": False})
@handle_errors
def finetune(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(metavar="KEY=VALUE", help="Recipe overrides, e.g. optim.lr=0.1."),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(metavar="NAME|PATH", help="Recipe name or YAML path. [default: default]"),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(metavar="NAME", help=_h("timm or torchvision model.", "model.name")),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(metavar="NAME", help=_h("auto | timm | torchvision.", "model.source")),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help=_h(
                "digits | mnist | fashion-mnist | cifar10 | cifar100 | imagefolder | idx.",
                "data.dataset",
            ),
        ),
    ] = None,
    data_dir: Annotated[str | None, typer.Option(metavar="DIR", help="Dataset directory.")] = None,
    download: Annotated[
        bool | None, typer.Option("--download", help="Let torchvision download the dataset.")
    ] = None,
    mu: Annotated[
        list[float] | None,
        typer.Option(
            metavar="FLOAT (repeatable)",
            help=_h(
                "Size penalty (loss = task + mu * size in MiB); several values make a "
                "trade-off sweep.",
                "train.mu",
            ),
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(metavar="N", help=_h("DiffQ epochs per mu.", "train.epochs"))
    ] = None,
    float_epochs: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help=_h(
                "Float training epochs before DiffQ (0 with --weights/--pretrained).",
                "train.float_epochs",
            ),
        ),
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(
            metavar="N", help="Cap on optimizer steps per mu, and on the float stage's steps."
        ),
    ] = None,
    target_mb: Annotated[
        list[float] | None,
        typer.Option(
            "--target-mb",
            help="Size budget in MiB (2^20 bytes, true size); mu adapts to meet it. Repeatable; "
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
    output: Annotated[
        str | None,
        typer.Option(metavar="DIR", help="Run directory (default runs/<model>-<dataset>-mu<mu>)."),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(metavar="PATH", help="Local float checkpoint (.pt/.pth/.safetensors)."),
    ] = None,
    pretrained: Annotated[
        bool | None,
        typer.Option(
            "--pretrained", help="Start from the library's pretrained weights (downloads)."
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(metavar="NAME", help=_h("auto | cpu | cuda | cuda:N.", "train.device")),
    ] = None,
    amp: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help=_h("none | bf16 | fp16 mixed precision (fp16: CUDA only).",
                                    "train.amp")
        ),
    ] = None,
    channels_last: Annotated[
        bool | None, typer.Option("--channels-last", help="Channels-last memory format.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(metavar="N", help=_h("Random seed.", "train.seed"))
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier run in the run directory.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run directory's checkpoint.")
    ] = False,
    keep_checkpoint: Annotated[
        bool,
        typer.Option(
            "--keep-checkpoint", help="Keep checkpoint.pt after a finished run (deleted otherwise)."
        ),
    ] = False,
    print_config: Annotated[
        bool,
        typer.Option("--print-config", help="Print the resolved recipe (YAML or --json), exit."),
    ] = False,
    json_out: JsonOpt = False,
):
    """Fine-tune a model with DiffQ and write a quantized artifact (model.th)."""
    from diffq_cli.config import recipe_to_dict
    from diffq_cli.recipe import dump_recipe, resolve_recipe

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
        "train.float_epochs": float_epochs,
        "train.max_steps": max_steps,
        "train.device": device,
        "train.amp": amp,
        "train.channels_last": channels_last,
        "train.seed": seed,
        "output": output,
    }
    resolved, notes = resolve_recipe(recipe, overrides or [], flags)
    if print_config:
        from diffq_cli.models import resolve_model

        resolve_model(resolved.model.name, resolved.model.source)  # a typo fails here, not later
        for note in notes:
            typer.echo(note, err=True)
        if json_out:
            typer.echo(json.dumps(recipe_to_dict(resolved), indent=2))
        else:
            typer.echo(dump_recipe(resolved), nl=False)
        return
    from diffq_cli.finetune import finetune as run

    reporter = _reporter(json_out)
    for note in notes:
        reporter.note(note)
    summary = run(
        resolved, reporter, resume=resume, overwrite=overwrite, keep_checkpoint=keep_checkpoint
    )
    if json_out:
        reporter.emit_json(summary)


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _at_least_1(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise InputError(f"{name} must be >= 1, got {value}")


@app.command()
@handle_errors
def size(
    file: FileArg,
    max_mb: Annotated[
        float | None,
        typer.Option(help="Exit 1 when the file on disk is larger than this (MiB, 2^20 bytes)."),
    ] = None,
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
    from diffq_cli.sizes import inspect_file

    _at_least_1("--top", top)
    if max_mb is not None and max_mb < 0:
        raise InputError(f"--max-mb must be >= 0, got {max_mb:g}")
    summary = inspect_file(file)
    if no_layers:
        summary["layers"] = []
    elif top is not None:
        summary["layers"] = sorted(summary["layers"], key=lambda r: -(r.get("mb") or 0))[:top]
    from diffq_cli.units import mib

    file_mb = mib(summary["file_bytes"])
    passed = max_mb is None or file_mb <= max_mb
    summary["gate"] = _gate("max_mb", max_mb, passed)
    if plot is not None:
        _plot_bits(file, plot)
    reporter = _reporter(json_out)
    if json_out:
        reporter.emit_json(summary)
    else:
        reporter.size_table(summary)
        if summary["layers"]:
            title = "Per layer" if top is None else f"Largest {len(summary['layers'])} layers"
            reporter.layer_table(summary["layers"], title)
    if not passed:
        raise GateError(f"{file} is {file_mb:.3f} MiB, over --max-mb {max_mb:g} MiB")


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
    _at_least_1("--batch-size", batch_size)
    _at_least_1("--val-subset", val_subset)
    if not _DEVICE.fullmatch(device):
        raise InputError(f"--device must be auto, cpu, cuda, cuda:N or mps; got {device!r}")
    from diffq_cli.distributed import resolve_device
    from diffq_cli.evaluate import evaluate_artifact

    if min_acc is not None and not 0 <= min_acc <= 100:
        raise InputError(f"--min-acc is a percentage between 0 and 100, got {min_acc:g}")
    reporter = _reporter(json_out)
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
        reporter.emit_json({**result, "gate": _gate("min_acc", min_acc, passed)})
    else:
        reporter.eval_table(result)
    if not passed:
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

    reporter = _reporter(json_out)
    result = export_artifact(
        file, out, fmt=format, atol=atol, dtype=dtype, activity=reporter.activity
    )
    if json_out:
        reporter.emit_json({**result, "gate": _gate("atol", atol, result["ok"])})
    else:
        reporter.export_table(result)
    if not result["ok"]:
        raise GateError(
            f"exported model differs from the quantized one by {result['max_abs_diff']:.1e} "
            f"(> --atol {atol:g})"
        )


@app.command()
@handle_errors
def recipes(
    name: Annotated[str | None, typer.Argument(help="Print this recipe.")] = None,
    copy: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="Write an editable copy of recipe NAME to PATH."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Let --copy replace a file.")] = False,
    json_out: JsonOpt = False,
):
    """List the shipped recipes, print one, or copy one to edit (--copy my.yaml)."""
    from diffq_cli.recipe import copy_recipe, list_recipes, load_recipe, recipe_text

    if copy is not None:
        if not name:
            raise InputError("--copy needs a recipe NAME: diffq recipes default --copy my.yaml")
        path = copy_recipe(name, copy, force=force)
        if json_out:
            typer.echo(json.dumps({"recipe": name, "copy": str(path)}, indent=2))
        else:
            typer.echo(f"wrote {path}; run it with: diffq finetune --recipe {path}", err=True)
        return
    if name:
        text = recipe_text(name)
        if json_out:
            from diffq_cli.config import recipe_to_dict

            typer.echo(json.dumps(recipe_to_dict(load_recipe(name)), indent=2))
        else:
            typer.echo(text, nl=False)
        return
    found = list_recipes()
    if json_out:
        rows = [{"name": rname, "description": desc} for rname, desc in found]
        typer.echo(json.dumps(rows, indent=2))
        return
    for rname, desc in found:
        typer.echo(f"{rname:28s} {desc}")


@app.command()
@handle_errors
def models(
    pattern: Annotated[
        str | None,
        typer.Argument(help="A substring ('resnet') or an fnmatch pattern ('resnet1*')."),
    ] = None,
    source: Annotated[str, typer.Option(help="auto | timm | torchvision.")] = "auto",
    json_out: JsonOpt = False,
):
    """List model names from torchvision and timm."""
    from diffq_cli.models import list_models

    names = list_models(pattern, source)
    if not names:
        raise InputError(f"no model matches {pattern!r}; try a shorter substring such as 'resnet'")
    if json_out:
        typer.echo(json.dumps([{"name": n, "source": src} for n, src in names], indent=2))
        return
    for name, src in names:
        typer.echo(f"{name:40s} {src}")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="diffq")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
