"""What every command shares: the JSON flag, the file argument, gates, one-line errors with the
documented exit codes, the reporter, and small argument checks."""

import functools
from pathlib import Path
from typing import Annotated

import typer

from diffq_cli.errors import GateError, InputError, TrainingError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document to stdout.")]
FileArg = Annotated[
    Path, typer.Argument(help="An artifact (model.th), a quantized state or a checkpoint.")
]


def gate(name: str, limit: float | None, passed: bool) -> dict | None:
    """The JSON record of a gate, or None when the user asked for none."""
    return None if limit is None else {name: limit, "passed": bool(passed)}


def fail(code: int, message: str):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def handle_errors(fn):
    """Turns our exceptions into one line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as err:
            fail(2, str(err))
        except (GateError, TrainingError) as err:
            fail(1, str(err))
        except KeyboardInterrupt:
            fail(130, "interrupted; rerun with --resume to continue from the last checkpoint")

    return wrapper


def make_reporter(json_mode: bool):
    from diffq_cli.cli.report import Reporter

    return Reporter(json_mode=json_mode)


def at_least_1(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise InputError(f"{name} must be >= 1, got {value}")
