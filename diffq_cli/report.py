"""Terminal output: notes and progress on stderr, result tables on stdout, or one JSON document.

The only module that imports Rich (other modules import this one inside functions). Rules:

- Tables go to stdout; notes and progress bars go to stderr, so ``diffq ... > out.txt`` keeps
  only the results.
- With ``json_mode`` stdout gets exactly one JSON document, written by :meth:`Reporter.emit_json`;
  the tables are skipped (the JSON carries the same numbers).
- No colour when ``NO_COLOR`` is set; no colour or animation when the stream is not a TTY
  (progress bars then do nothing and the caller logs epoch lines with :meth:`Reporter.note`).
- ``enabled=False`` (DDP ranks other than 0) silences everything.
"""

import json
import math
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

NONE = "—"  # shown for a missing value
MAX_BITS, BAR_WIDTH = 15, 20  # a layer at 15 bits fills the whole bar
_EIGHTHS = " ▏▎▍▌▋▊▉"  # partial blocks, so a bar resolves 1/8 of a character
_PIPE_WIDTH = 120  # width of tables written to a file or pipe (Rich would use 80 and wrap)


def _num(value: Any, fmt: str, suffix: str = "") -> str:
    """``value`` formatted with ``fmt``, or NONE for None/NaN."""
    if value is None or isinstance(value, float) and math.isnan(value):
        return NONE
    return f"{value:{fmt}}{suffix}"


def bits_bar(bits: float | None) -> str:
    """A bar proportional to ``bits`` (15 bits = ``BAR_WIDTH`` characters), in unicode blocks."""
    if bits is None or math.isnan(bits):
        return ""
    eighths = round(min(max(bits, 0.0), MAX_BITS) / MAX_BITS * BAR_WIDTH * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


def _plain_json(obj: Any) -> Any:
    """``obj`` with NaN/inf as null, tuples as lists, and paths / tensor scalars as plain values."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _plain_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain_json(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return _plain_json(obj.item())
    return str(obj)


class _FieldsColumn(ProgressColumn):
    """The task's extra fields (loss, acc, size...) as ``name value`` pairs."""

    def render(self, task: Task) -> Text:
        return Text("  ".join(f"{k} {_num(v, '.4g') if isinstance(v, float) else v}"
                              for k, v in task.fields.items()))


class ProgressHandle:
    """What :meth:`Reporter.progress` yields; ``update`` is a no-op when nothing is shown."""

    def __init__(self, progress: Progress | None = None, task: Any = None):
        self._progress, self._task = progress, task

    def update(self, advance: float = 1, **fields: Any) -> None:
        """Advance the bar and set its shown fields, e.g. ``update(loss=0.3, acc=91.2)``."""
        if self._progress is not None:
            self._progress.update(self._task, advance=advance, **fields)


class Reporter:
    """Everything the CLI shows the user.

    Args:
        json_mode: stdout is reserved for one JSON document (:meth:`emit_json`).
        enabled: False silences all output (non-zero distributed ranks).

    Example:
        >>> rep = Reporter()
        >>> with rep.progress(total=100, description="epoch 1") as bar:
        ...     bar.update(loss=0.5)
        >>> rep.note("epoch 1: loss 0.5")
    """

    def __init__(self, json_mode: bool = False, enabled: bool = True):
        self.json_mode, self.enabled = json_mode, enabled
        self.no_color = bool(os.environ.get("NO_COLOR"))
        # Console(file=None) looks up sys.stdout / sys.stderr at each write, so redirection
        # (pytest's capsys, CliRunner) done after construction is honoured.
        self.err = Console(stderr=True, no_color=self.no_color, quiet=not enabled,
                           highlight=False)
        self.out = Console(no_color=self.no_color, quiet=json_mode or not enabled,
                           highlight=False)
        if not self.out.is_terminal and "COLUMNS" not in os.environ:
            self.out.width = _PIPE_WIDTH

    @property
    def animated(self) -> bool:
        """Whether progress bars are drawn: stderr is a TTY, NO_COLOR unset, not silenced."""
        return (self.enabled and self.err.is_terminal and not self.err.is_dumb_terminal
                and not self.no_color)

    def note(self, msg: str) -> None:
        """Print one line to stderr (never interpreted as Rich markup, never wrapped)."""
        self.err.print(msg, markup=False, highlight=False, soft_wrap=True)

    def warn(self, msg: str) -> None:
        """Print ``warning: msg`` to stderr."""
        self.err.print(f"warning: {msg}", style="yellow", markup=False, soft_wrap=True)

    def emit_json(self, obj: Any) -> None:
        """Write ``obj`` to stdout as one JSON document (indent 2); NaN becomes null."""
        if self.enabled:
            sys.stdout.write(json.dumps(_plain_json(obj), indent=2) + "\n")
            sys.stdout.flush()

    @contextmanager
    def progress(self, total: int, description: str) -> Iterator[ProgressHandle]:
        """A progress bar on stderr with the fields passed to ``update``; only on a TTY.

        Args:
            total: number of steps.
            description: text left of the bar, e.g. ``"mu 0.001 epoch 2/3"``.
        """
        if not self.animated:
            yield ProgressHandle()
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), _FieldsColumn())
        # transient: the finished bar is replaced by the caller's epoch line
        with Progress(*columns, console=self.err, transient=True) as bar:
            yield ProgressHandle(bar, bar.add_task(description, total=total))

    def _table(self, title: str | None, headers: list[str], rows: list[list[str]],
               left: tuple[int, ...] = (0,)) -> None:
        table = Table(title=title, title_justify="left")
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i in left else "right", no_wrap=i == 0)
        for row in rows:
            table.add_row(*row)
        self.out.print(table)

    def tradeoff_table(self, rows: list[dict], title: str | None = "Size / accuracy trade-off"):
        """Print one row per model: float, each DiffQ run, then the baselines.

        Args:
            rows: dicts with keys ``method`` (float, diffq, ptq, qat...), ``label`` (the run:
                ``"mu=0.001"``, ``"target=4MB"``, ``"4 bits"``; a float is printed with ``g``),
                ``accuracy`` (percent), ``delta`` (accuracy minus the float accuracy, points),
                ``true_mb`` (float32 size for the float row, true quantized size otherwise),
                ``artifact_mb`` (bytes on disk of the saved artifact / 2**20), ``compression``
                (float size / artifact size), ``mean_bits``, ``mu`` (the final mu of a DiffQ
                run), ``best`` (no row at the same or a smaller size is more accurate: marked
                ★) and ``collapsed`` (accuracy at chance level: "chance"). A missing or None
                value prints as "—".
            title: table title.
        """
        body = []
        for row in rows:
            label = row.get("label")
            label = f"{label:g}" if isinstance(label, float) else _num(label, "")
            flags = (("★", row.get("best")), ("chance", row.get("collapsed")))
            note = " ".join(text for text, on in flags if on)
            body.append([
                _num(row.get("method"), ""), label, _num(row.get("accuracy"), ".2f"),
                _num(row.get("delta"), "+.2f"),
                _num(row.get("true_mb"), ".3f"), _num(row.get("artifact_mb"), ".3f"),
                _num(row.get("compression"), ".2f", "×"), _num(row.get("mean_bits"), ".2f"),
                _num(row.get("mu"), ".3g"), note])
        self._table(title, ["method", "run", "accuracy (%)", "Δ vs float (pp)", "true size MB",
                            "artifact MB", "compression ×", "mean bits", "mu", "note"], body,
                    left=(0, 1, 9))
        if any(row.get("best") for row in rows) or any(row.get("collapsed") for row in rows):
            self.out.print("★ best accuracy at its size or smaller; chance: accuracy at chance "
                           "level (collapsed)", markup=False, highlight=False)

    def layer_table(self, layers: list[dict], title: str) -> None:
        """Print bits per layer with a bar proportional to the mean bits (15 bits = full bar).

        Args:
            layers: dicts with keys ``name``, ``numel``, ``bits_mean``, ``bits_min``,
                ``bits_max`` (None for a layer kept in float) and ``mb`` (its true size in MB);
                optional ``bound_mb`` (order-0 entropy bound) and ``disk_bytes`` (bytes in the
                file), shown as two more columns when any layer has ``disk_bytes``.
            title: table title.
        """
        extra = any("disk_bytes" in layer for layer in layers)  # diffq size, not finetune
        body = [[str(layer.get("name")), _num(layer.get("numel"), ","),
                 _num(layer.get("bits_mean"), ".2f"), _num(layer.get("bits_min"), "g"),
                 _num(layer.get("bits_max"), "g"), _num(layer.get("mb"), ".4g")]
                + ([_num(layer.get("bound_mb"), ".4g"), _num(layer.get("disk_bytes"), ",")]
                   if extra else [])
                + [bits_bar(layer.get("bits_mean"))] for layer in layers]
        head = ["layer", "numel", "bits mean", "min", "max", "MB"]
        head += ["bound MB", "disk bytes"] if extra else []
        self._table(title, head + [f"bits (0-{MAX_BITS})"], body, left=(0, len(head)))

    def kv_table(self, items: Mapping[str, Any], title: str | None = None) -> None:
        """Print a two-column table of already formatted values (None prints as "—")."""
        body = [[str(k), NONE if v is None else str(v)] for k, v in items.items()]
        self._table(title, ["quantity", "value"], body)

    def size_table(self, summary: Mapping[str, Any]) -> None:
        """Print the sizes of a saved artifact (for ``diffq size FILE``).

        Args:
            summary: keys ``float_mb`` (float32 size), ``true_mb`` (true quantized size),
                ``file_bytes`` (bytes on disk), ``compression`` (float_mb / true_mb, computed
                when missing), ``mean_bits``; optional ``path`` (the title) and ``bound_mb``
                (order-0 entropy bound of the content, with the file's ratio to it).
        """
        float_mb, true_mb, nbytes = (summary.get(k) for k in ("float_mb", "true_mb", "file_bytes"))
        ratio = summary.get("compression")
        if ratio is None and float_mb and true_mb:
            ratio = float_mb / true_mb
        on_disk = NONE if nbytes is None else f"{nbytes:,} ({nbytes / 2**20:.3f} MB)"
        self.kv_table({"float32 size": _num(float_mb, ".3f", " MB"),
                       "true quantized size": _num(true_mb, ".3f", " MB"),
                       "bytes on disk": on_disk, "compression": _num(ratio, ".2f", "×"),
                       "mean bits": _num(summary.get("mean_bits"), ".2f"),
                       **({"order-0 bound": _num(summary["bound_mb"], ".3f", " MB"),
                           "on disk / bound": _num(summary.get("bound_ratio"), ".3f", "×")}
                          if summary.get("bound_mb") is not None else {})},
                      title=str(summary["path"]) if summary.get("path") else None)
