"""The ``diffq`` command line: parse, call the library, render. The only Typer importer.

Exit codes: 0 ok; 1 a gate failed (``--max-mb``, ``--min-acc``, export tolerance) or training
diverged; 2 bad usage or input. Heavy modules are imported inside the commands so that
``diffq --help`` answers fast.
"""

import sys
from typing import Annotated

import typer

from diffq_cli import __version__
from diffq_cli.cli import catalog, file_cmds, finetune_cmd

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


# One module per command family; registered here so that the modules need not know the app.
app.command(cls=finetune_cmd._RecipeHelp, context_settings={"allow_extra_args": False})(
    finetune_cmd.finetune)
app.command()(file_cmds.size)
app.command("eval")(file_cmds.eval_)
app.command()(file_cmds.export)
app.command()(catalog.recipes)
app.command()(catalog.models)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="diffq")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
