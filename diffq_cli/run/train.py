"""One training function for every stage of a run: the float stage, a DiffQ run (one mu or one
size target) and the uniform QAT / LSQ baselines.

Read ``train`` top to bottom: the set-up (the order matters and is said where it does), the
resumption from ``checkpoint.pt``, then the epochs. Each step is the forward, the size penalty
(DiffQ), the NaN check, the backward and the optimizers' steps, then the freeze of the widths
when it is due (DiffQ's last ``train.freeze_bits`` of the steps). Each epoch ends with the
evaluation on truly quantized weights, ``metrics.jsonl`` and an atomic checkpoint. At the end a
size target is checked once more and what the widths learned is counted.
"""

import hashlib
import math
import time
from pathlib import Path

import torch

from diffq_cli.errors import TrainingError
from diffq_cli.fileio import atomic_write, torch_bytes
from diffq_cli.quant.budget import integer_widths, moved_groups
from diffq_cli.quant.calibrate import recalibrate_batchnorm
from diffq_cli.run.runlog import float_records, mean_bits, run_log, write_metrics
from diffq_cli.run.sensitivity import grad_squares
from diffq_cli.run.steps import (
    autocast,
    build_optimizer,
    build_quantizer,
    make_scaler,
    optimize,
    rng_state,
    set_lr,
    set_rng_state,
    to_device,
)
from diffq_cli.run.targets import SizeTarget
from diffq_cli.units import human

FLOAT_SHUFFLE = 10_000  # the float stage's shuffle seeds: epoch + this, apart from the runs'


def run_seed(seed: int, stage: str, label: str) -> int:
    """The seed of one run, from its identity alone (the recipe's seed, the method, its size,
    mu or width): the run draws its noise, its squared-gradient batches and any sampling from
    it, so it gives the same result alone, inside any sweep, in any order."""
    digest = hashlib.sha256(f"{seed}/{stage}/{label}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def run_label(quant, mu: float | None, target_mb: float | None, size: str = "true") -> str:
    """How a run is named in the table, the logs and ``summary.json``: by its size target or mu
    for DiffQ (``target=4MiB``, ``file=2MiB`` aiming at the file, ``mu=0.001``), by its
    width for the fixed-width methods (``4 bits``; the method is its own column)."""
    if quant.method != "diffq":
        return f"{quant.bits:g} bits"
    if target_mb is None:
        return f"mu={mu:g}"
    return f"{'file' if size == 'file' else 'target'}={target_mb:g}MiB"


def train(model, recipe, loaders, run_dir: Path, ctx, mu: float = 0.0,
          target_mb: float | None = None, stage: str = "quantized") -> dict:
    """Trains ``model`` for one stage of the run; returns its metrics.

    Args:
        model: the model on ``ctx.device``, with the starting weights.
        recipe: the resolved recipe (``quant.method`` says which quantizer).
        loaders: (train, val) data loaders.
        run_dir: where ``checkpoint.pt`` and ``metrics.jsonl`` go.
        ctx: run context (``device``, ``reporter``, ``resume``, ``dist``, ``file_mb``).
        mu: DiffQ's size penalty (with ``target_mb``: adapted, see ``targets.SizeTarget``).
        target_mb: a DiffQ size budget in MiB (the true size, or the file's with ``--size
            file``); the widths start at it and are fitted to it when they freeze.
        stage: ``"float"`` for plain float training (``train.float_epochs``, no quantizer, no
            evaluation), ``"reference"`` for the float reference (the quantized runs' epochs and
            evaluations, no quantizer), else the quantized stage of ``quant.method``.
    """
    o, t = recipe.optim, recipe.train
    train_loader, val_loader = loaders
    floating = stage == "float"
    quantized = stage not in ("float", "reference")
    diffq = quantized and recipe.quant.method == "diffq"
    file = diffq and t.target_size == "file"
    epochs = t.float_epochs if floating else t.epochs
    total = min(epochs * len(train_loader), t.max_steps or math.inf)
    label = (run_label(recipe.quant, mu, target_mb, t.target_size) if quantized
             else {"float": "float", "reference": "float reference"}[stage])
    stage_name = recipe.quant.method if quantized else stage
    # Its own random stream, and the first epoch's batches for the squared gradients: nothing
    # here reads a stream that another run advanced (a resumed run restores its own below).
    torch.manual_seed(run_seed(t.seed, stage_name, label))
    ctx.dist.set_epoch(train_loader, FLOAT_SHUFFLE * floating, t.seed)

    # Set-up. Order matters: the squared gradients are the float model's, measured first; the
    # main optimizer exists before the quantizer adds the bit parameters; DDP wraps the model
    # after both (it must see the bit parameters as its own).
    squares = grad_squares(model, train_loader, ctx, t.channels_last) if target_mb else None
    optimizers = [build_optimizer(model.parameters(), o)]
    quantizer = size = None
    if quantized:
        quantizer = build_quantizer(model, recipe.quant)
        # The paper: a separate Adam for the bits. Fused: one kernel for all logits (5x faster
        # on CPU than the per-tensor loop), for float32 parameters on CPU and CUDA.
        optimizers.append(torch.optim.Adam([{"params": []}], lr=o.bits_lr, fused=True))
        quantizer.setup_optimizer(optimizers[1], lr=o.bits_lr)
    if diffq:
        file_mb = None
        if file:  # the artifact this state would be written to (outputs.py), or the estimate
            file_mb = ((lambda: ctx.file_mb(quantizer)) if ctx.file_mb
                       else quantizer.file_model_size)
        size = SizeTarget(quantizer, mu, target_mb, file_mb, squares, ctx)
    start_widths = integer_widths(quantizer)
    net = ctx.dist.wrap(model)
    scaler = make_scaler(ctx, t.amp)
    criterion = torch.nn.CrossEntropyLoss()
    freeze_at = total - round(total * t.freeze_bits) if diffq and t.freeze_bits else None
    step = epoch = 0
    history, fit, frozen_size = [], {}, None

    def freeze_when_due() -> None:
        """The last ``train.freeze_bits`` of the steps train the weights for the rounding the
        evaluation applies: widths fitted to the target (if any), then frozen (out of the bits'
        optimizer; a learned grid's scales stay and keep training), forwards through true
        quantization with a straight-through gradient, no size term."""
        nonlocal fit, frozen_size
        if freeze_at is None or step < freeze_at or quantizer.frozen:
            return
        if target_mb is not None:
            fit = size.fit()
            what = (f"file {fit['file_mb']:.3f} MiB" if "file_mb" in fit
                    else f"true size {fit['true_mb']:.3f} MiB")
            ctx.reporter.note(f"{label}: widths fitted to the target by loss per bit: "
                              f"{fit['raised']} raised, {fit['lowered']} lowered, {what}")
        quantizer.freeze_bits()
        _drop_widths(optimizers[1], quantizer)
        frozen_size = torch.tensor(quantizer.true_model_size())  # logged from now on
        ctx.reporter.note(f"{label}: widths frozen at step {step}, last {total - step} steps "
                          "train through true quantization")

    # Resumption: a run that was interrupted goes on from its last epoch.
    ckpt_path, metrics_path = run_dir / "checkpoint.pt", run_dir / "metrics.jsonl"
    kept = float_records(metrics_path)  # the float stage's epochs stay in the file
    if not floating and ctx.resume and ctx.dist.agree(ckpt_path.exists(), str(ckpt_path)):
        ckpt = torch.load(ckpt_path, map_location=ctx.device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizers[0].load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        if quantizer is not None:
            saved = ckpt["bits_optimizer"]
            if sum(len(g["params"]) for g in saved["param_groups"]) < sum(
                    len(g["params"]) for g in optimizers[1].param_groups):
                _drop_widths(optimizers[1], quantizer)  # saved after the widths froze
            optimizers[1].load_state_dict(saved)
            quantizer.load_noise_state_dict(ckpt["noise"])
        set_rng_state(ckpt["rng"])
        if size is not None and "aim" in ckpt:  # checkpoints before --target-mb have no aim
            size.load_state_dict(ckpt["aim"])
        epoch, step, history = ckpt["epoch"], ckpt["step"], ckpt["history"]
        ctx.reporter.note(f"resumed {label} from {ckpt_path} at epoch {epoch}, step {step}")

    if diffq:
        freeze_when_due()  # at once with train.freeze_bits=1, or where a resumed run stopped
    log = run_log(ctx, label, t, total, run_dir)
    bits = (lambda: mean_bits(quantizer)) if quantized else None  # read only when logged

    def calibrate():  # train.bn_recalibrate: BatchNorm statistics of the quantized model
        if quantized:
            recalibrate_batchnorm(model, train_loader, t.bn_recalibrate)

    with ctx.reporter.progress(total - step, label) as bar:
        try:
            while epoch < epochs and step < total:
                started, seen, loss_sum = time.time(), 0, 0.0
                net.train()
                ctx.dist.set_epoch(train_loader, epoch + FLOAT_SHUFFLE * floating, t.seed)
                for x, y in train_loader:
                    if step >= total:
                        break
                    x, y = to_device(x, y, ctx, t.channels_last)
                    set_lr(optimizers[0], o, step, total, len(train_loader))
                    with autocast(ctx.device, t.amp):
                        loss = criterion(net(x), y).float()
                    size_mb = frozen_size
                    if size is not None and not quantizer.frozen:
                        term, size_mb = size.penalty(step)  # mu * model_size(), float32
                        loss = loss + term
                    elif size is not None and ctx.dist.distributed:
                        # DDP waits for every parameter it wraps: a zero-weighted size keeps
                        # the frozen widths (in no optimizer now) in the graph.
                        loss = loss + 0.0 * quantizer.model_size()
                    value = float(loss.detach())  # one sync per step: the NaN check and logs
                    if not math.isfinite(value):
                        raise TrainingError(
                            f"float pre-training loss became {value}; lower optim.lr"
                            if floating else f"loss became {value} at step {step} ({label}); "
                            f"lower optim.lr or mu. The last good checkpoint is kept in "
                            f"{ckpt_path}")
                    optimize(loss, optimizers, scaler, o.grad_clip)
                    step, seen, loss_sum = step + 1, seen + 1, loss_sum + value
                    bar.update(loss=f"{value:.3f}")
                    log.step(step, value, optimizers[0].param_groups[0]["lr"], len(y),
                             size=size_mb, bits=bits)
                    if diffq:
                        freeze_when_due()
                epoch += 1
                record = {"stage": stage_name,
                          "epoch": epoch, "step": step, "loss": loss_sum / max(seen, 1)}
                if floating:
                    record.update(lr=optimizers[0].param_groups[0]["lr"],
                                  seconds=time.time() - started)
                    history.append(record)
                    ctx.reporter.note(f"float epoch {epoch}/{epochs} step {step}: loss "
                                      f"{human(record['loss'], 'loss')} (mean over the epoch)")
                    log.epoch(record)
                    if ctx.dist.is_main:
                        write_metrics(metrics_path, history)
                    continue
                calibrate()
                record.update(_evaluation(model, quantizer, size, val_loader, ctx, target_mb,
                                          file, start_widths))
                record.update(lr=optimizers[0].param_groups[0]["lr"],
                              seconds=time.time() - started)
                history.append(record)
                mu_text = f"mu {human(size.mu, 'mu')}, " if diffq else ""
                measured = (f"quantized accuracy {human(record['accuracy'], 'pct')}, true size "
                            f"{human(record['true_mb'], 'mib')}" if quantized
                            else f"accuracy {human(record['accuracy'], 'pct')}")
                ctx.reporter.note(f"{label} epoch {epoch}/{epochs} step {step}: {mu_text}loss "
                                  f"{human(record['loss'], 'loss')}, {measured}")
                log.epoch(record)
                if ctx.dist.is_main:
                    write_metrics(metrics_path, kept + history)
                    atomic_write(ckpt_path, torch_bytes({
                        "model": model.state_dict(), "optimizer": optimizers[0].state_dict(),
                        "scaler": scaler.state_dict(), "rng": rng_state(), "epoch": epoch,
                        "step": step, "history": history, "mu": mu,
                        **({"bits_optimizer": optimizers[1].state_dict(),
                            "noise": quantizer.noise_state_dict()} if quantizer else {}),
                        **({"aim": size.state_dict()} if size else {})}))
        finally:
            log.close()  # flushes TensorBoard scalars even when a step fails
    model.eval()
    if floating:
        return {"history": history}

    # The end: a target is checked once more (widths are lowered here only where no frozen
    # phase fitted them; the accuracy is then measured again).
    late = size.fit(late=True) if size is not None else {}
    if late.get("lowered"):
        what = (f"file {late['file_mb']:.3f} MiB" if "file_mb" in late
                else f"true size {late['true_mb']:.3f} MiB")
        ctx.reporter.note(f"{label}: lowered {late['lowered']} group widths by loss per bit; "
                          f"{what}")
    accuracy = history[-1]["accuracy"] if history and not late.get("lowered") else None
    if accuracy is None:
        calibrate()
        accuracy = ctx.dist.accuracy(model, val_loader, ctx.device)
    if fit:
        late = {**fit, **late, "lowered": fit["lowered"] + late.get("lowered", 0)}
    moved = moved_groups(start_widths, integer_widths(quantizer))
    if moved:
        ctx.reporter.note(f"{label}: {moved['groups_moved']} of {moved['groups']} groups "
                          f"({100 * moved['moved_fraction']:.0f} %) ended at a width other than "
                          f"their start (mean change {moved['moved_mean_bits']:.2f} bits)")
    return {"quantizer": quantizer, "history": history, "mu": size.mu if size else mu,
            "fit": late, "accuracy": accuracy, "moved": moved, "start_widths": start_widths}


def _evaluation(model, quantizer, size, val_loader, ctx, target_mb, file, start_widths) -> dict:
    """The epoch's measures of ``metrics.jsonl``: (quantized) accuracy on all ranks, sizes, and
    how many widths moved."""
    accuracy = ctx.dist.accuracy(model, val_loader, ctx.device)  # over all ranks' shards
    if quantizer is None:  # the float reference
        return {"accuracy": accuracy}
    return {
        "mu": size.mu if size is not None else 0.0,
        "target_mb": target_mb,
        "accuracy": accuracy,
        "true_mb": quantizer.true_model_size(),
        "model_size": float(quantizer.model_size(file=file).detach()),
        **({"file_mb": quantizer.file_model_size()} if file else {}),
        **moved_groups(start_widths, integer_widths(quantizer)),
    }


def _drop_widths(optimizer, quantizer) -> None:
    """Takes the widths out of ``optimizer`` (their Adam state too: its momentum would keep
    moving them); a learned grid's scales stay and keep training."""
    widths = {id(qp.bit_param) for qp in quantizer.quantized}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in widths:
                optimizer.state.pop(p, None)
                p.grad = None
        group["params"] = [p for p in group["params"] if id(p) not in widths]


def float_start(model, recipe, train_loader, run_dir: Path, ctx) -> None:
    """The float stage, saved as ``float.pt`` so that ``--resume`` does not redo it."""
    path = run_dir / "float.pt"
    if ctx.resume and ctx.dist.agree(path.exists(), str(path)):
        model.load_state_dict(torch.load(path, map_location=ctx.device, weights_only=True))
        ctx.reporter.note(f"resumed: float weights from {path}")
        return
    train(model, recipe, (train_loader, None), run_dir, ctx, stage="float")
    if ctx.dist.is_main:
        atomic_write(path, torch_bytes(model.state_dict()))
