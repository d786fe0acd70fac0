"""What the CLI tests share: run a command in-process, read its one error line."""

import re

from typer.testing import CliRunner

from diffq_cli.cli.app import app


def run(*args):
    """``diffq ARGS`` through Typer's CliRunner; exceptions propagate (a traceback fails)."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_error_line(result) -> str:
    """The one error line; a gate that failed after the work ran may follow its progress lines
    (``evaluating ...``, ``...: done in 1.2 s``), bad input (exit 2) fails before any."""
    lines = result.stderr.strip().splitlines()
    progress = [x for x in lines[:-1] if x.endswith("...") or re.search(r": done in \S+ s$", x)]
    assert lines and lines[-1].startswith("error: ") and progress == lines[:-1], result.stderr
    if result.exit_code == 2:
        assert len(lines) == 1, result.stderr
    return lines[-1]
