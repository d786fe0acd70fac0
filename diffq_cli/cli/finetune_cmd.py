"""``diffq finetune``: flags to a resolved recipe, then the run (``run.finetune``)."""

import json
from typing import Annotated

import typer
import typer.core

from diffq_cli.cli.common import JsonOpt, fail, handle_errors, make_reporter
from diffq_cli.errors import InputError

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
        from diffq_cli.config.load import default_values

        try:
            defaults = default_values()
        except InputError as err:
            fail(2, str(err))
        for param in self.params:
            base = getattr(param, "_diffq_help", param.help)
            if base in _HELP_KEYS:
                param._diffq_help = base  # formatting twice must not add the value twice
                param.help = _with_default(base, defaults.get(_HELP_KEYS[base]))
        return super().format_help(ctx, formatter)


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
            help="Size budget in MiB (2^20 bytes; true size, or the file with --size file); mu "
            "adapts to meet it. Repeatable; exclusive with --mu.",
        ),
    ] = None,
    size: Annotated[
        str | None,
        typer.Option(
            "--size", metavar="KIND",
            help=_h("true (bit-packed, default) | file (the entropy-coded model.th): what "
                    "--target-mb aims at and the table compares.", "train.target_size"),
        ),
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME (repeatable)",
            help="ptq (uniform post-training rows; with every choice but none) | float (the "
            "float model fine-tuned as long, no quantizer: what 'vs float' compares with) | "
            "qat (train uniform QAT at the width nearest each result) | lsq (LSQ) | all | none.",
        ),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(metavar="N", help=_h("Run every fine-tuned row N times (seeds seed..seed+N-1, "
                                          "one float model, PTQ once): mean ± sd and verdicts "
                                          "on paired differences.", "train.seeds")),
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
    from diffq_cli.config.load import dump_recipe, recipe_to_dict, resolve_recipe

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
        "train.target_size": size,
        "train.baseline": list(baseline) if baseline else None,
        "train.epochs": epochs,
        "train.float_epochs": float_epochs,
        "train.max_steps": max_steps,
        "train.device": device,
        "train.amp": amp,
        "train.channels_last": channels_last,
        "train.seed": seed,
        "train.seeds": seeds,
        "output": output,
    }
    resolved, notes = resolve_recipe(recipe, overrides or [], flags)
    if print_config:
        from diffq_cli.models.factory import resolve_model

        resolve_model(resolved.model.name, resolved.model.source)  # a typo fails here, not later
        for note in notes:
            typer.echo(note, err=True)
        if json_out:
            typer.echo(json.dumps(recipe_to_dict(resolved), indent=2))
        else:
            typer.echo(dump_recipe(resolved), nl=False)
        return
    from diffq_cli.run.finetune import finetune as run

    reporter = make_reporter(json_out)
    for note in notes:
        reporter.note(note)
    summary = run(
        resolved, reporter, resume=resume, overwrite=overwrite, keep_checkpoint=keep_checkpoint
    )
    if json_out:
        reporter.emit_json(summary)
