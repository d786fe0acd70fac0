"""What a training stage logs besides the progress bar: plain step lines and TensorBoard scalars.

On a TTY the Rich bar shows the live numbers; without one (CI logs, ``nohup``, pipes) the bar
draws nothing, so every ``train.log_every`` steps one plain line goes to stderr instead:

    mu=0.001 step 10/20: loss 0.4321, lr 0.0488, size 10.21 MiB, mean bits 7.95, 412 img/s

With ``train.logger: tensorboard`` the same numbers, and each epoch's record, are written as
TensorBoard scalars under ``<run dir>/tensorboard`` (rank 0 only).
"""

import json
import time
from collections.abc import Callable
from pathlib import Path

from diffq_cli.fileio import atomic_write
from diffq_cli.units import human


def mean_bits(quantizer) -> float | None:
    """Mean bit width over the quantized weights now (learned, real-valued for DiffQ)."""
    import torch

    from diffq_cli.quant.diffq import DiffQuantizer

    if not isinstance(quantizer, DiffQuantizer):  # uniform, LSQ: one fixed width
        return float(quantizer.bits)
    from diffq_cli.quant.budget import learned_bits

    unique = quantizer.quantized  # shared parameters appear once
    if not unique:
        return None
    total = 0.0
    for qp, bits in zip(unique, learned_bits(quantizer), strict=True):
        lengths = torch.full_like(bits, float(qp.group_size))
        lengths[-1] = qp.numel - qp.group_size * (qp.n_groups - 1)  # a shorter last group
        total += float(torch.dot(bits, lengths))
    return total / sum(qp.numel for qp in unique)


class RunLog:
    """Logs one training stage (the float stage, or one DiffQ / QAT run).

    Args:
        reporter: the run's Reporter (its ``animated`` says whether a bar is drawn).
        label: how lines start and the TensorBoard tag prefix, e.g. ``"mu=0.001"``, ``"float"``.
        every: ``train.log_every``.
        total: the stage's total steps, shown as ``step N/total``.
        log_dir: where TensorBoard files go; None writes none.
    """

    def __init__(self, reporter, label: str, every: int, total: int,
                 log_dir: Path | None = None):
        self.reporter, self.label = reporter, label
        self.every, self.total = every, total
        self.lines = reporter.enabled and not reporter.animated
        self._writer = None
        if log_dir is not None and reporter.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(log_dir))
        self._images, self._since = 0, time.perf_counter()

    def step(self, step: int, loss: float, lr: float, images: int,
             size=None, bits: Callable[[], float | None] | None = None) -> None:
        """Count a finished step; every ``every`` steps, log it.

        ``size`` (the differentiable size, MiB: a tensor or a float) is read and ``bits``
        called only when a line is due: both may wait for the device.
        """
        self._images += images
        if step % self.every or not (self.lines or self._writer):
            return
        now = time.perf_counter()
        rate = self._images / max(now - self._since, 1e-9)
        self._images, self._since = 0, now
        if hasattr(size, "detach"):  # the penalty term itself: read it without its graph
            size = size.detach()
        values = {"loss": loss, "lr": lr, "size_mb": None if size is None else float(size),
                  "mean_bits": bits() if bits else None, "images_per_s": rate}
        if self.lines:
            parts = [f"loss {human(loss, 'loss')}", f"lr {human(lr, 'mu')}"]
            if values["size_mb"] is not None:
                parts.append(f"size {human(values['size_mb'], 'mib')}")
            if values["mean_bits"] is not None:
                parts.append(f"mean bits {human(values['mean_bits'], 'bits')}")
            parts.append(f"{human(rate, 'rate')} img/s")
            self.reporter.note(f"{self.label} step {step}/{self.total}: " + ", ".join(parts))
        self._scalars(values, step)

    def epoch(self, record: dict) -> None:
        """Write an epoch's metrics record (numbers only) as scalars at its step."""
        self._scalars({f"epoch_{k}": v for k, v in record.items() if k not in ("epoch", "step")},
                      record["step"])

    def _scalars(self, values: dict, step: int) -> None:
        if self._writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{self.label}/{key}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def write_metrics(path: Path, history: list) -> None:
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in history).encode())


def float_records(path: Path) -> list:
    """The float stage's lines of ``metrics.jsonl`` (``stage: float``), kept when a DiffQ run
    rewrites the file."""
    if not path.is_file():
        return []
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [r for r in records if r.get("stage") == "float"]


def run_log(ctx, label: str, t, total: int, run_dir: Path | None) -> RunLog:
    """Step lines without a TTY; TensorBoard scalars under ``run_dir/tensorboard`` if asked."""
    board = t.logger == "tensorboard" and run_dir is not None and ctx.dist.is_main
    return RunLog(ctx.reporter, label, t.log_every, total,
                  run_dir / "tensorboard" / label if board else None)
