"""The step loop both training stages share: one pass over the loader with the schedule,
mixed precision, loss scaling, clipping and the NaN check. What a stage adds to the task loss
(nothing, or DiffQ's ``mu * model_size()``) and does after each step is passed in."""

import math
from dataclasses import dataclass

import torch

from diffq_cli.run.steps import autocast, make_scaler, optimize, set_lr, to_device


@dataclass
class Stage:
    """What one training stage carries from step to step."""

    net: torch.nn.Module  # what the loop calls: the model, DDP-wrapped when distributed
    optimizers: list  # the weights' optimizer first (it gets the schedule)
    scaler: torch.amp.GradScaler
    criterion: torch.nn.Module
    total: int  # steps of the whole stage
    steps_per_epoch: int
    shuffle_offset: int = 0  # added to the epoch when reseeding the shuffle
    epoch: int = 0
    step: int = 0


def make_stage(net, optimizers, ctx, recipe, steps_per_epoch, total, shuffle_offset=0) -> Stage:
    return Stage(net, optimizers, make_scaler(ctx, recipe.train.amp),
                 torch.nn.CrossEntropyLoss(), total, steps_per_epoch, shuffle_offset)


def run_epoch(stage: Stage, loader, recipe, ctx, add_terms, on_step, on_nan) -> tuple[int, float]:
    """One pass over ``loader`` (or up to ``stage.total`` steps): (steps, mean loss).

    ``add_terms(task_loss)`` gives ``(loss, size)``: the float stage adds nothing, DiffQ adds
    ``mu * model_size()`` (in float32, outside autocast). ``on_nan(value)`` makes the error.
    """
    o, t = recipe.optim, recipe.train
    stage.net.train()
    ctx.dist.set_epoch(loader, stage.shuffle_offset + stage.epoch, t.seed)
    seen, loss_sum = 0, 0.0
    for x, y in loader:
        if stage.step >= stage.total:
            break
        x, y = to_device(x, y, ctx, t.channels_last)
        set_lr(stage.optimizers[0], o, stage.step, stage.total, stage.steps_per_epoch)
        with autocast(ctx.device, t.amp):
            task = stage.criterion(stage.net(x), y)
        loss, size = add_terms(task)
        value = float(loss.detach())  # one sync per step, for the NaN check and logs
        if not math.isfinite(value):
            raise on_nan(value)
        optimize(loss, stage.optimizers, stage.scaler, o.grad_clip)
        stage.step += 1
        seen += 1
        loss_sum += value
        on_step(value, len(y), size)
    stage.epoch += 1
    return seen, loss_sum / max(seen, 1)
