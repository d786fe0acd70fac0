"""Units and how numbers are written for people: the one definition of the size unit (MiB) and
of the compression ratio, and :func:`human`, used by every table and log line.

A leaf module (no imports from the package, no torch): the library (``quant/``) uses it too.

Sizes are counted in MiB (2**20 bytes) everywhere; JSON keys ending in ``_mb`` hold MiB too
(they keep their historical names). Human output only: ``--json`` carries the raw numbers.

Example:
    >>> human(94.98607242339833, "pct"), human(10.685338020324707, "mib")
    ('94.99 %', '10.685 MiB')
    >>> human(2_200_000, "bytes"), human(7.62939453125e-06, "diff")
    ('2,200,000 bytes (2.098 MiB)', '7.6e-06')
"""

import math
from collections.abc import Callable
from typing import Any

MIB = 2**20  # bytes in a MiB: the one size unit (as in the paper and the reference DiffQ)
MIB_BITS = 8 * MIB  # bits in a MiB


def mib(nbytes: float) -> float:
    """``nbytes`` in MiB."""
    return nbytes / MIB


def compression(float_mib: float, size_mib: float) -> float | None:
    """How many times smaller than the float32 model: ``float_mib / size_mib``, where the size
    is what is measured (a file's bytes on disk, or a true size); None for an empty size."""
    return float_mib / size_mib if size_mib else None


NONE = "—"  # shown for a missing value


def _mib_small(v: float) -> str:
    """A per-layer size: four decimals, and "<0.0001" instead of a row of zeros."""
    return "<0.0001" if 0 < v < 5e-5 else f"{v:.4f}"


def _sci(v: float) -> str:
    """Two significant digits in scientific notation: 7.6e-06, 1e-04, 0."""
    return "0" if v == 0 else f"{v:.1e}".replace(".0e", "e")


# kind -> (format of the number, unit appended when ``unit`` is True)
_FORMATS: dict[str, tuple[Callable[[Any], str], str]] = {
    "pct": (lambda v: f"{v:.2f}", " %"),           # accuracy, percent
    "pp": (lambda v: f"{v:+.2f}", " pp"),          # difference of two percentages
    "mib": (lambda v: f"{v:.3f}", " MiB"),         # a model or file size
    "mib_small": (_mib_small, " MiB"),             # one layer's size (spans 1e-5 .. 10)
    "count": (lambda v: f"{int(v):,}", ""),        # numel, images
    "bytes": (lambda v: f"{int(v):,}", " bytes"),  # with the MiB in brackets when unit=True
    "bits": (lambda v: f"{v:.2f}", ""),            # mean bits
    "int": (lambda v: f"{v:g}", ""),               # whole bit widths
    "ratio": (lambda v: f"{v:.2f}", "×"),          # compression
    "ratio_fine": (lambda v: f"{v:.3f}", "×"),     # file over its entropy bound (near 1)
    "diff": (_sci, ""),                             # output differences, tolerances
    "mu": (lambda v: f"{v:.3g}", ""),              # penalties, learning rates
    "loss": (lambda v: f"{v:.4f}", ""),
    "seconds": (lambda v: f"{v:.1f}", " s"),
    "rate": (lambda v: f"{v:,.0f}", ""),           # images per second
}


def human(value: Any, kind: str = "text", unit: bool = True) -> str:
    """``value`` written for a person: rounded to what matters, with its unit.

    Args:
        value: a number (or, for ``kind="text"``, anything); None and NaN print as "—".
        kind: one of pct, pp, mib, mib_small, count, bytes, bits, int, ratio, ratio_fine, diff, mu,
            loss, seconds, rate, text.
        unit: append the unit (" %", " MiB"...); False where a column header states it.
    """
    if value is None or isinstance(value, float) and math.isnan(value):
        return NONE
    if kind == "text":
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    number, suffix = _FORMATS[kind]
    text = number(value)
    if kind == "bytes" and unit:
        return f"{text}{suffix} ({value / MIB:.3f} MiB)"
    return text + suffix if unit else text
