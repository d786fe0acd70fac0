"""What one optimizer step needs: optimizers, schedule, mixed precision, loss scaling, RNG.

Small pure helpers, shared by the float stage and the DiffQ stage of ``train.py``.
"""

import math
import random

import torch


def build_quantizer(model, q):
    """The quantizer a recipe's ``quant`` section asks for, attached to ``model``."""
    from diffq_cli.quant import registry

    return registry.build(q.method, model, q.settings())


def build_optimizer(params, o):
    """The weights' optimizer of a recipe's ``optim`` section."""
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def lr_factor(step: int, total: int, steps_per_epoch: int, o) -> float:
    """Multiplier of the base learning rate at ``step`` (linear warm-up, then the schedule)."""
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "cosine":
        done = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    if o.schedule == "step":
        return o.gamma ** (step // (o.step_size * steps_per_epoch))
    return 1.0


def rng_state() -> dict:
    """Every generator a step draws from: noise drawn on CUDA uses the CUDA generators."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restores what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def autocast(device: torch.device, amp: str):
    """The mixed-precision context of ``train.amp`` (fp16 only on CUDA)."""
    if amp == "none" or (amp == "fp16" and device.type != "cuda"):
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def to_device(x, y, ctx, channels_last: bool):
    """A batch on the run's device (channels-last if asked)."""
    x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def set_lr(optimizer, o, step: int, total: int, steps_per_epoch: int) -> None:
    """The scheduled learning rate of ``step`` on every group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = o.lr * lr_factor(step, total, steps_per_epoch, o)


def optimize(loss, optimizers, scaler, grad_clip) -> None:
    """Backward and one step of every optimizer (loss scaling and clipping as configured).

    Clipping is per optimizer: the weights and the bit logits are clipped separately (one norm
    over both would let the logits' gradients shrink every weight update), and each
    optimizer's gradients are unscaled first.
    """
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        for opt in optimizers:
            scaler.unscale_(opt)
            params = [p for group in opt.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()


def make_scaler(ctx, amp: str):
    """fp16 loss scaling on CUDA; a disabled scaler (a no-op) otherwise."""
    return torch.amp.GradScaler("cuda", enabled=amp == "fp16" and ctx.device.type == "cuda")
