"""Error types shared by the library and the CLI.

The CLI maps them to exit codes: ``InputError`` (bad usage, bad input, missing data) -> 2,
``GateError`` (a ``--max-mb`` / ``--min-acc`` / ``--atol`` check failed) -> 1.
"""


class DiffqError(Exception):
    """Base class of every error diffq raises on purpose."""


class InputError(DiffqError, ValueError):
    """Bad usage or input; the message says what to pass instead."""


class GateError(DiffqError):
    """A quality or size gate asked for by the user failed."""


class TrainingError(DiffqError):
    """Training stopped (e.g. a NaN loss); the last good checkpoint is kept."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when empty), at most ``limit``
    characters: how a foreign error is quoted inside one of our one-line errors."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]
