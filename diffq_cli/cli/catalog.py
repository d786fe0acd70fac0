"""``diffq recipes`` and ``diffq models``: what can be run."""

import json
from pathlib import Path
from typing import Annotated

import typer

from diffq_cli.cli.common import JsonOpt, handle_errors
from diffq_cli.errors import InputError


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
    from diffq_cli.config.load import copy_recipe, list_recipes, load_recipe, recipe_text

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
            from diffq_cli.config.load import recipe_to_dict

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
    from diffq_cli.models.factory import list_models

    names = list_models(pattern, source)
    if not names:
        raise InputError(f"no model matches {pattern!r}; try a shorter substring such as 'resnet'")
    if json_out:
        typer.echo(json.dumps([{"name": n, "source": src} for n, src in names], indent=2))
        return
    for name, src in names:
        typer.echo(f"{name:40s} {src}")
