"""The DiffQ fine-tuning loop for one value of mu: task loss + mu * model_size().

Read top to bottom: ``train_one`` builds the quantizer and optimizers, optionally resumes from
``checkpoint.pt``, then loops over epochs; every epoch ends with an evaluation on truly
quantized weights, a line in ``metrics.jsonl`` and an atomic checkpoint.
"""

import functools
import json
import math
import random
import time
from pathlib import Path

import torch

from diffq_cli.aim import CALIBRATE_EVERY, fit_target, start_control
from diffq_cli.errors import TrainingError
from diffq_cli.fileio import atomic_write, torch_bytes
from diffq_cli.runlog import RunLog, mean_bits
from diffq_cli.units import human


def build_quantizer(model, q):
    """The quantizer a recipe's ``quant`` section asks for, attached to ``model``."""
    import dataclasses

    from diffq_cli.quant import registry

    return registry.build(q.method, model, dataclasses.asdict(q))


def build_optimizer(params, o):
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


def _rng_state() -> dict:
    """Every generator a step draws from: noise drawn on CUDA uses the CUDA generators."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _autocast(device: torch.device, amp: str):
    if amp == "none" or (amp == "fp16" and device.type != "cuda"):
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _batch(x, y, ctx, channels_last: bool):
    x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def _set_lr(optimizer, o, step: int, total: int, steps_per_epoch: int) -> None:
    for group in optimizer.param_groups:
        group["lr"] = o.lr * lr_factor(step, total, steps_per_epoch, o)


def _optimize(loss, optimizers, scaler, grad_clip) -> None:
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


def _scaler(ctx, amp: str):
    return torch.amp.GradScaler("cuda", enabled=amp == "fp16" and ctx.device.type == "cuda")


def train_one(model, recipe, mu, loaders, run_dir: Path, ctx, target_mb=None) -> dict:
    """Fine-tunes ``model`` with DiffQ for one ``mu`` or one size target; returns the metrics.

    Args:
        model: the float model on ``ctx.device``, with the starting weights.
        recipe: the resolved recipe.
        mu: the model-size penalty (with ``target_mb``: ignored, mu is adapted, see ``aim``).
        loaders: (train, val) data loaders.
        run_dir: where ``checkpoint.pt`` and ``metrics.jsonl`` go.
        ctx: run context (``device``, ``reporter``, ``resume``, ``dist``: distributed helpers).
        target_mb: a true-size budget in MB: mu becomes a Lagrange multiplier and the final
            rounding is made to fit (``diffq_cli.aim``, ``quant.budget``).
    """
    o, t = recipe.optim, recipe.train
    train_loader, val_loader = loaders
    # Order matters: the main optimizer exists before the quantizer adds the bit parameters,
    # and DDP wraps the model after both (it must see the bit parameters as its own).
    optimizer = build_optimizer(model.parameters(), o)
    quantizer = build_quantizer(model, recipe.quant)
    # The paper: a separate Adam for the bits. Fused: one kernel for all logits (5x faster on CPU
    # than the per-tensor loop), available for float32 parameters on CPU and CUDA.
    bits_opt = torch.optim.Adam([{"params": []}], lr=o.bits_lr, fused=True)
    quantizer.setup_optimizer(bits_opt, lr=o.bits_lr)
    control = start_control(quantizer, mu, target_mb)
    label = f"mu={mu:g}" if target_mb is None else f"target={target_mb:g}MB"
    net = ctx.dist.wrap(model)
    scaler = _scaler(ctx, t.amp)
    criterion = torch.nn.CrossEntropyLoss()
    steps_per_epoch = len(train_loader)
    total = (
        t.epochs * steps_per_epoch
        if t.max_steps is None
        else min(t.max_steps, t.epochs * steps_per_epoch)
    )
    epoch, step, history = 0, 0, []
    ckpt_path, metrics_path = run_dir / "checkpoint.pt", run_dir / "metrics.jsonl"
    float_records = _float_records(metrics_path)  # the float stage's epochs stay in the file
    stage = recipe.quant.method  # "diffq", or "uniform" for a QAT baseline

    if ctx.resume and ctx.dist.agree(ckpt_path.exists(), str(ckpt_path)):  # every rank loads
        ckpt = torch.load(ckpt_path, map_location=ctx.device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        bits_opt.load_state_dict(ckpt["bits_optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        quantizer.load_noise_state_dict(ckpt["noise"])
        _set_rng_state(ckpt["rng"])
        if "aim" in ckpt:  # checkpoints written before --target-mb existed
            control.load_state_dict(ckpt["aim"])
        epoch, step, history = ckpt["epoch"], ckpt["step"], ckpt["history"]
        ctx.reporter.note(f"resumed {label} from {ckpt_path} at epoch {epoch}, step {step}")

    log = _run_log(ctx, label, t, total, run_dir)
    with ctx.reporter.progress(total - step, label) as bar:
        while epoch < t.epochs and step < total:
            net.train()
            ctx.dist.set_epoch(train_loader, epoch, recipe.train.seed)
            start, seen, loss_sum = time.time(), 0, 0.0
            for x, y in train_loader:
                if step >= total:
                    break
                x, y = _batch(x, y, ctx, t.channels_last)
                _set_lr(optimizer, o, step, total, steps_per_epoch)
                with _autocast(ctx.device, t.amp):
                    task = criterion(net(x), y)
                # The size term stays in float32, outside autocast.
                size = quantizer.model_size()
                loss = task.float() + control.mu * size
                value = float(loss.detach())  # one sync per step, for the NaN check and logs
                if target_mb is not None:
                    if step % CALIBRATE_EVERY == 0:
                        control.calibrate(float(size.detach()), quantizer.true_model_size())
                    control.update(float(size.detach()))  # dual ascent on mu
                if not math.isfinite(value):
                    raise TrainingError(
                        f"loss became {value} at step {step} ({label}); lower optim.lr or mu. "
                        f"The last good checkpoint is kept in {ckpt_path}"
                    )
                _optimize(loss, [optimizer, bits_opt], scaler, o.grad_clip)
                step += 1
                seen += 1
                loss_sum += value
                bar.update(loss=f"{value:.3f}")
                log.step(step, value, optimizer.param_groups[0]["lr"], len(y), size=size,
                         bits=functools.partial(mean_bits, quantizer))
            epoch += 1
            acc = ctx.dist.accuracy(model, val_loader, ctx.device)  # over all ranks' shards
            record = {
                "stage": stage,
                "mu": control.mu,
                "target_mb": target_mb,
                "epoch": epoch,
                "step": step,
                "loss": loss_sum / max(seen, 1),
                "accuracy": acc,
                "true_mb": quantizer.true_model_size(),
                "model_size": float(quantizer.model_size().detach()),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.time() - start,
            }
            history.append(record)
            log.epoch(record)
            ctx.reporter.note(
                f"{label} epoch {epoch}/{t.epochs} step {step}: mu {human(control.mu, 'mu')}, "
                f"loss {human(record['loss'], 'loss')}, quantized accuracy "
                f"{human(acc, 'pct')}, true size {human(record['true_mb'], 'mib')}"
            )
            if ctx.dist.is_main:
                _write_metrics(metrics_path, float_records + history)
                atomic_write(
                    ckpt_path,
                    torch_bytes(
                        {
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "bits_optimizer": bits_opt.state_dict(),
                            "scaler": scaler.state_dict(),
                            "noise": quantizer.noise_state_dict(),
                            "rng": _rng_state(),
                            "epoch": epoch,
                            "step": step,
                            "history": history,
                            "mu": mu,
                            "aim": control.state_dict(),
                        }
                    ),
                )
    log.close()
    model.eval()
    fit = fit_target(quantizer, target_mb, ctx.reporter)
    accuracy = history[-1]["accuracy"] if history and not fit.get("lowered") else None
    return {
        "quantizer": quantizer,
        "history": history,
        "mu": control.mu,
        "fit": fit,
        "accuracy": ctx.dist.accuracy(model, val_loader, ctx.device)
        if accuracy is None
        else accuracy,
    }


def _write_metrics(path: Path, history: list) -> None:
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in history).encode())


def _float_records(path: Path) -> list:
    """The float stage's lines of ``metrics.jsonl`` (``stage: float``), kept when a DiffQ run
    rewrites the file."""
    if not path.is_file():
        return []
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [r for r in records if r.get("stage") == "float"]


def _run_log(ctx, label: str, t, total: int, run_dir: Path | None) -> RunLog:
    """Step lines without a TTY; TensorBoard scalars under ``run_dir/tensorboard`` if asked."""
    board = t.logger == "tensorboard" and run_dir is not None and ctx.dist.is_main
    return RunLog(ctx.reporter, label, t.log_every, total,
                  run_dir / "tensorboard" / label if board else None)


def train_float(model, recipe, train_loader, ctx, run_dir: Path | None = None) -> None:
    """Plain float training for ``train.float_epochs``, at most ``train.max_steps`` steps (a
    starting point when no pretrained weights are available); same optimizer, precision and
    clipping settings, its own schedule. Each epoch is a ``stage: float`` line of
    ``run_dir/metrics.jsonl`` (when ``run_dir`` is given)."""
    o, t = recipe.optim, recipe.train
    optimizer = build_optimizer(model.parameters(), o)
    net = ctx.dist.wrap(model)
    scaler = _scaler(ctx, t.amp)
    criterion = torch.nn.CrossEntropyLoss()
    total = t.float_epochs * len(train_loader)
    if t.max_steps is not None:  # a short (smoke) run stays short in this stage too
        total = min(total, t.max_steps)
    step, history = 0, []
    log = _run_log(ctx, "float", t, total, run_dir)
    net.train()
    for epoch in range(t.float_epochs):
        if step >= total:
            break
        ctx.dist.set_epoch(train_loader, 10_000 + epoch, t.seed)
        start, seen, loss_sum = time.time(), 0, 0.0
        for x, y in train_loader:
            if step >= total:
                break
            x, y = _batch(x, y, ctx, t.channels_last)
            _set_lr(optimizer, o, step, total, len(train_loader))
            with _autocast(ctx.device, t.amp):
                loss = criterion(net(x), y)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingError(f"float pre-training loss became {value}; lower optim.lr")
            _optimize(loss, [optimizer], scaler, o.grad_clip)
            step += 1
            seen += 1
            loss_sum += value
            log.step(step, value, optimizer.param_groups[0]["lr"], len(y))
        record = {"stage": "float", "epoch": epoch + 1, "step": step,
                  "loss": loss_sum / max(seen, 1), "lr": optimizer.param_groups[0]["lr"],
                  "seconds": time.time() - start}
        history.append(record)
        log.epoch(record)
        ctx.reporter.note(f"float epoch {epoch + 1}/{t.float_epochs} step {step}: "
                          f"loss {human(record['loss'], 'loss')} (mean over the epoch)")
        if run_dir is not None and ctx.dist.is_main:
            _write_metrics(run_dir / "metrics.jsonl", history)
    log.close()
    model.eval()
