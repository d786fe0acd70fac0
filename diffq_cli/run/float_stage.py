"""The float stage: plain training before DiffQ, when no pretrained weights are given."""

import time
from pathlib import Path

from diffq_cli.errors import TrainingError
from diffq_cli.fileio import atomic_write, torch_bytes
from diffq_cli.run.loop import make_stage, run_epoch
from diffq_cli.run.runlog import run_log, write_metrics
from diffq_cli.run.steps import build_optimizer
from diffq_cli.units import human


def train_float(model, recipe, train_loader, ctx, run_dir: Path | None = None) -> None:
    """Plain float training for ``train.float_epochs``, at most ``train.max_steps`` steps (a
    starting point when no pretrained weights are available); same optimizer, precision and
    clipping settings, its own schedule. Each epoch is a ``stage: float`` line of
    ``run_dir/metrics.jsonl`` (when ``run_dir`` is given)."""
    o, t = recipe.optim, recipe.train
    total = t.float_epochs * len(train_loader)
    if t.max_steps is not None:  # a short (smoke) run stays short in this stage too
        total = min(total, t.max_steps)
    # Its own shuffle seeds (epoch + 10,000), so the DiffQ stage's order does not depend on it.
    stage = make_stage(ctx.dist.wrap(model), [build_optimizer(model.parameters(), o)], ctx, recipe,
                   len(train_loader), total, shuffle_offset=10_000)
    history = []
    log = run_log(ctx, "float", t, total, run_dir)

    def on_step(value, n, size):
        log.step(stage.step, value, stage.optimizers[0].param_groups[0]["lr"], n)

    def nan(value):
        return TrainingError(f"float pre-training loss became {value}; lower optim.lr")

    try:
        while stage.epoch < t.float_epochs and stage.step < total:
            start = time.time()
            _, mean_loss = run_epoch(stage, train_loader, recipe, ctx, lambda task: (task, None),
                                  on_step, nan)
            record = {"stage": "float", "epoch": stage.epoch, "step": stage.step,
                      "loss": mean_loss, "lr": stage.optimizers[0].param_groups[0]["lr"],
                      "seconds": time.time() - start}
            history.append(record)
            log.epoch(record)
            ctx.reporter.note(f"float epoch {stage.epoch}/{t.float_epochs} step {stage.step}: "
                              f"loss {human(record['loss'], 'loss')} (mean over the epoch)")
            if run_dir is not None and ctx.dist.is_main:
                write_metrics(run_dir / "metrics.jsonl", history)
    finally:
        log.close()
    model.eval()


def float_start(model, recipe, train_loader, run_dir: Path, ctx) -> None:
    """Float pre-training, saved as ``float.pt`` so that ``--resume`` does not redo it."""
    import torch


    path = run_dir / "float.pt"
    if ctx.resume and ctx.dist.agree(path.exists(), str(path)):
        model.load_state_dict(torch.load(path, map_location=ctx.device, weights_only=True))
        ctx.reporter.note(f"resumed: float weights from {path}")
        return
    train_float(model, recipe, train_loader, ctx, run_dir)
    if ctx.dist.is_main:
        atomic_write(path, torch_bytes(model.state_dict()))
