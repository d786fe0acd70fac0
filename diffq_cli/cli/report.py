"""Terminal output: notes and progress on stderr, result tables on stdout, or one JSON document.

The only module that imports Rich (other modules import this one inside functions). Rules:

- Tables go to stdout; notes and progress bars go to stderr, so ``diffq ... > out.txt`` keeps
  only the results.
- With ``json_mode`` stdout gets exactly one JSON document, written by :meth:`Reporter.emit_json`;
  the tables are skipped (the JSON carries the same numbers).
- No colour with ``NO_COLOR``, no colour or animation off a TTY (progress bars then do nothing
  and the caller logs epoch lines with :meth:`Reporter.note`); ``enabled=False`` or
  :meth:`Reporter.silence` (DDP ranks other than 0) silences everything.
"""

import json
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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

from diffq_cli.fileio import plain_json
from diffq_cli.units import NONE, human

MAX_BITS = BAR_WIDTH = 15  # one character per bit: a layer at 15 bits fills the bar
_EIGHTHS = " ▏▎▍▌▋▊▉"  # partial blocks, so a bar resolves 1/8 of a character
_PIPE_WIDTH = 132  # width of tables written to a file or pipe (Rich would use 80 and wrap)


def bits_bar(bits: float | None) -> str:
    """A bar proportional to ``bits`` (15 bits = ``BAR_WIDTH`` characters), in unicode blocks."""
    if bits is None or math.isnan(bits):
        return ""
    eighths = round(min(max(bits, 0.0), MAX_BITS) / MAX_BITS * BAR_WIDTH * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


class _FieldsColumn(ProgressColumn):
    """The task's extra fields (loss, acc, size...) as ``name value`` pairs."""

    def render(self, task: Task) -> Text:
        return Text("  ".join(f"{k} {human(v, 'mu') if isinstance(v, float) else v}"
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

    def silence(self) -> None:
        """Prints nothing from now on (a distributed run's ranks other than 0)."""
        self.enabled = False
        self.err.quiet = self.out.quiet = True

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
            sys.stdout.write(json.dumps(plain_json(obj), indent=2) + "\n")
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

    @contextmanager
    def activity(self, description: str) -> Iterator[None]:
        """Show that ``description`` is under way, on stderr: a spinner on a TTY, otherwise a
        start line and an end line with the time taken (logs and CI need no terminal)."""
        if not self.enabled:
            yield
            return
        start = time.perf_counter()
        if self.animated:
            with self.err.status(description):
                yield
            return
        self.note(f"{description}...")
        yield
        self.note(f"{description}: done in {human(time.perf_counter() - start, 'seconds')}")

    def _table(self, title: str | None, headers: list[str], rows: list[list[str]],
               left: tuple[int, ...] = (0,), whole: tuple[int, ...] = ()) -> None:
        table = Table(title=title, title_justify="left")
        for i, header in enumerate(headers):
            # the name, the last column (bits bars) and ``whole`` ones are never wrapped
            table.add_column(header, justify="left" if i in left else "right",
                             no_wrap=i in (0, len(headers) - 1, *whole))
        for row in rows:
            table.add_row(*row)
        self.out.print(table)

    def tradeoff_table(self, rows: list[dict], title: str | None = "Size / accuracy trade-off"):
        """Print one row per model: float, each DiffQ run, then the baselines.

        Args:
            rows: dicts with keys ``method`` (float, diffq, ptq, qat...), ``label`` (the run:
                ``"mu=0.001"``, ``"target=4MB"``, ``"4 bits"``; a float is printed with ``g``),
                ``accuracy`` (percent), ``delta`` (accuracy minus the float accuracy, points),
                ``true_mb`` (float32 size for the float row, true quantized size otherwise, MiB),
                ``artifact_mb`` (bytes on disk of the saved artifact / 2**20), ``compression``
                (float size / artifact size), ``mean_bits``, ``mu`` (the final mu of a DiffQ
                run), ``best`` (no row at the same or a smaller size is more accurate: marked
                ★), ``collapsed`` (accuracy at chance level: "chance") and ``moved_fraction``
                (DiffQ: groups whose learned width left its start). A missing or None value
                prints as "—".
            title: table title.
        """
        body = []
        for row in rows:
            moved = row.get("moved_fraction")
            flags = (("★", row.get("best")), ("chance", row.get("collapsed")),
                     (f"{100 * (moved or 0):.0f} % of widths moved", moved is not None))
            body.append([
                human(row.get("method")), human(row.get("label")),
                human(row.get("accuracy"), "pct") + (
                    f" ± {row['accuracy_sd']:.2f}" if row.get("accuracy_sd") is not None
                    else ""), human(row.get("delta"), "pp"),
                human(row.get("true_mb"), "mib"), human(row.get("artifact_mb"), "mib"),
                human(row.get("compression"), "ratio"), human(row.get("mean_bits"), "bits"),
                human(row.get("mu"), "mu"), " ".join(text for text, on in flags if on)])
        self._table(title, ["method", "run", "accuracy", "vs float", "true size", "artifact",
                            "compression", "mean bits", "mu", "note"], body, left=(0, 1, 9),
                    whole=(2,))  # "98.98 % ± 0.32" on one line
        if any(row.get("best") for row in rows) or any(row.get("collapsed") for row in rows):
            self.out.print("★ best accuracy at its size or smaller; chance: accuracy at chance "
                           "level (collapsed)", markup=False, highlight=False)

    def verdicts(self, lines: list[str]) -> None:
        """Plain sentences under the trade-off table (``baselines.verdicts``)."""
        for line in lines:  # one line each, never wrapped: scripts grep them
            self.out.print(line, markup=False, highlight=False, soft_wrap=True)

    def layer_table(self, layers: list[dict], title: str) -> None:
        """Print bits per layer with a bar proportional to the mean bits (15 bits = full bar).

        Args:
            layers: dicts with keys ``name``, ``numel``, ``bits_mean``, ``bits_min``,
                ``bits_max`` (None for a layer kept in float; a width above 15 also marks a
                float layer: "kept in float32") and ``mb`` (its true size in MiB); optional
                ``bound_mb`` (order-0 entropy bound) and ``disk_bytes`` (bytes in the file),
                shown as two more columns when any layer has ``disk_bytes``.
            title: table title.
        """
        extra = any("disk_bytes" in layer for layer in layers)  # diffq size, not finetune
        body = []
        for layer in layers:
            mean = layer.get("bits_mean")
            kept = mean is not None and mean > MAX_BITS  # a float tensor: 16 or 32 bits
            low, high = layer.get("bits_min"), layer.get("bits_max")
            span = human(low, "int") if low == high else f"{low:g}–{high:g}"
            bits = [NONE, NONE] if kept else [human(mean, "bits"), span]
            body.append([str(layer.get("name")), human(layer.get("numel"), "count"), *bits,
                         human(layer.get("mb"), "mib_small", unit=False)]
                        + ([human(layer.get("bound_mb"), "mib_small", unit=False),
                            human(layer.get("disk_bytes"), "count")] if extra else [])
                        + [f"kept in float{mean:g}" if kept else bits_bar(mean)])
        head = ["layer", "numel", "mean bits", "range", "size (MiB)"]
        head += ["bound (MiB)", "bytes on disk"] if extra else []
        self._table(title, head + [f"bits (0-{MAX_BITS})"], body, left=(0, len(head)))

    def kv_table(self, items: Mapping[str, Any], title: str | None = None) -> None:
        """Print a two-column table of already formatted values (None prints as "—")."""
        body = [[str(k), NONE if v is None else str(v)] for k, v in items.items()]
        self._table(title, ["quantity", "value"], body)

    def size_table(self, summary: Mapping[str, Any]) -> None:
        """Print the sizes of a saved artifact (for ``diffq size FILE``).

        Args:
            summary: keys ``float_mb`` (float32 size, MiB), ``true_mb`` (true quantized size,
                MiB), ``file_bytes`` (bytes on disk), ``compression`` (float_mb / true_mb,
                computed when missing), ``mean_bits``; optional ``path`` (the title) and
                ``bound_mb`` (order-0 entropy bound of the content, with the file's ratio to it).
        """
        float_mb, true_mb = summary.get("float_mb"), summary.get("true_mb")
        ratio = summary.get("compression")
        if ratio is None and float_mb and true_mb:
            ratio = float_mb / true_mb
        bound = summary.get("bound_mb") is not None
        self.kv_table({"float32 size": human(float_mb, "mib"),
                       "true quantized size": human(true_mb, "mib"),
                       "bytes on disk": human(summary.get("file_bytes"), "bytes"),
                       "compression (float32 / on disk)": human(ratio, "ratio"),
                       "mean bits": human(summary.get("mean_bits"), "bits"),
                       "grid": summary.get("grid"),
                       **({"order-0 entropy bound": human(summary["bound_mb"], "mib"),
                           "on disk / bound": human(summary.get("bound_ratio"), "ratio_fine")}
                          if bound else {})},
                      title=str(summary["path"]) if summary.get("path") else None)

    def eval_table(self, result: Mapping[str, Any]) -> None:
        """Print ``diffq eval``'s result (see ``evaluate.evaluate_artifact``) in words."""
        self.kv_table({"artifact": result.get("path"), "model": result.get("model"),
                       "dataset": result.get("dataset"),
                       "accuracy (measured now)": human(result.get("accuracy"), "pct"),
                       "accuracy (recorded at training)":
                           human(result.get("recorded_accuracy"), "pct"),
                       "validation images": human(result.get("samples"), "count")},
                      "Evaluation")

    def export_table(self, result: Mapping[str, Any]) -> None:
        """Print ``diffq export``'s result (see ``export.export_artifact``) in words."""
        diff, atol = result.get("max_abs_diff"), result.get("atol")
        check = (f"{'yes' if result.get('ok') else 'NO'} (max abs diff {human(diff, 'diff')} "
                 f"{'<=' if result.get('ok') else '>'} {human(atol, 'diff')})")
        items = {"format": result.get("format"), "file": result.get("path"),
                 "file size": human(result.get("bytes"), "bytes"),
                 "true quantized size": human(result.get("true_mb"), "mib"),
                 "export matches the quantized model": check,
                 "weights dtype": result.get("dtype")}
        if info := result.get("int"):
            dtypes = ", ".join(f"{n} {k}" for k, n in info["tensors"].items()) or "none"
            items["integer weights"] = (f"{dtypes} tensors ({info['near_exact']} near-exact), "
                                        f"{info['float']} kept float")
        if result.get("dtype_diff") is not None:
            items[f"outputs moved by rounding to {result.get('dtype')}"] = human(
                result["dtype_diff"], "diff")
        self.kv_table(items, "Export")
