"""The DiffQ stage: fine-tuning for one mu or one size target (the float stage is
``float_stage.py``, the shared step loop ``loop.py``).

Read top to bottom. ``train_one`` sets up the optimizers, the quantizer and the mu controller
(``_setup``), resumes from ``checkpoint.pt`` if asked (``_resume``), then runs epochs: each one
trains (``loop.run_epoch``), evaluates on truly quantized
weights (``_evaluate``) and writes ``metrics.jsonl`` and an atomic checkpoint (``_save``). At the
end the rounding is fitted to the size target, if one was given (``_finish``).
"""

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from diffq_cli.errors import TrainingError
from diffq_cli.fileio import atomic_write, torch_bytes
from diffq_cli.quant.allocate import group_sensitivity
from diffq_cli.quant.budget import integer_widths, moved_groups
from diffq_cli.quant.calibrate import recalibrate_batchnorm
from diffq_cli.run.loop import Stage, make_stage, run_epoch
from diffq_cli.run.runlog import float_records, mean_bits, run_log, write_metrics
from diffq_cli.run.sensitivity import grad_squares, group_grad_sums, tensor_sensitivity
from diffq_cli.run.steps import (
    bits_lr,
    build_optimizer,
    build_quantizer,
    rng_state,
    set_rng_state,
)
from diffq_cli.run.targets import fit_target, fit_widths, size_term, start_control
from diffq_cli.units import human


@dataclass
class _Run:
    """One DiffQ run: the model, its quantizer and controller, the stage and its history."""

    model: torch.nn.Module
    quantizer: object
    control: object
    stage: Stage
    label: str
    history: list
    bits_opt: torch.optim.Optimizer | None = None
    start_widths: list | None = None  # DiffQ: each group's integer width at the start
    fit: dict | None = None  # the fit to the size target made when the widths froze
    frozen_size: torch.Tensor | None = None  # true size once the widths are final
    grad_sums: list | None = None  # fisher: squared gradients per group, to price the fit

    def sensitivity(self) -> list | None:  # each group's loss per unit of 4^-bits, or None
        return None if self.grad_sums is None else group_sensitivity(self.quantizer, self.grad_sums)


def run_label(quant, mu: float | None, target_mb: float | None, size: str = "true") -> str:
    """How a run is named in the table, the logs and ``summary.json``: by its size target or mu
    for DiffQ (``target=4MiB``, ``file=2MiB`` aiming at the file, ``mu=0.001``), by its
    width for the fixed-width methods (``4 bits``; the method is its own column)."""
    if quant.method != "diffq":
        return f"{quant.bits:g} bits"
    if target_mb is None:
        return f"mu={mu:g}"
    return f"{'file' if size == 'file' else 'target'}={target_mb:g}MiB"


def _aims_file(recipe) -> bool:
    """Whether DiffQ's size penalty and target are the coded file's (``--size file``)."""
    return recipe.train.target_size == "file" and recipe.quant.method == "diffq"


def _setup(model, recipe, mu, target_mb, ctx, loader) -> _Run:
    o, t = recipe.optim, recipe.train
    steps_per_epoch = len(loader)
    sensitivity = squares = None
    if target_mb is not None and t.start_widths == "fisher":  # on the float model, first
        squares = grad_squares(model, loader, ctx, t.channels_last)
        sensitivity = tensor_sensitivity(model, squares, ctx)
    # Order matters: the main optimizer exists before the quantizer adds the bit parameters,
    # and DDP wraps the model after both (it must see the bit parameters as its own).
    optimizer = build_optimizer(model.parameters(), o)
    quantizer = build_quantizer(model, recipe.quant)
    # The paper: a separate Adam for the bits. Fused: one kernel for all logits (5x faster on CPU
    # than the per-tensor loop), available for float32 parameters on CPU and CUDA.
    total = t.epochs * steps_per_epoch
    if t.max_steps is not None:
        total = min(t.max_steps, total)
    lr = bits_lr(o, total - round(total * t.freeze_bits), recipe.quant)
    bits_opt = torch.optim.Adam([{"params": []}], lr=lr, fused=True)
    quantizer.setup_optimizer(bits_opt, lr=lr, scale_lr=o.bits_lr)  # scales: never travelled
    control = start_control(quantizer, mu, target_mb, _aims_file(recipe), sensitivity, bits_opt)
    label = run_label(recipe.quant, mu, target_mb, t.target_size)
    stage = make_stage(ctx.dist.wrap(model), [optimizer, bits_opt], ctx, recipe, steps_per_epoch,
                       total)
    grad_sums = None if squares is None else group_grad_sums(quantizer, squares, ctx)
    return _Run(model, quantizer, control, stage, label, [], bits_opt,
                integer_widths(quantizer), grad_sums=grad_sums)


def _resume(run: _Run, ckpt_path: Path, ctx) -> None:
    ckpt = torch.load(ckpt_path, map_location=ctx.device, weights_only=True)
    optimizer, bits_opt = run.stage.optimizers[0], run.bits_opt
    run.model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    saved = ckpt["bits_optimizer"]
    if sum(len(g["params"]) for g in saved["param_groups"]) < sum(
            len(g["params"]) for g in bits_opt.param_groups):
        _drop_widths(bits_opt, run.quantizer)  # saved after the widths froze
    bits_opt.load_state_dict(saved)
    run.stage.scaler.load_state_dict(ckpt["scaler"])
    run.quantizer.load_noise_state_dict(ckpt["noise"])
    set_rng_state(ckpt["rng"])
    if "aim" in ckpt:  # checkpoints written before --target-mb existed
        run.control.load_state_dict(ckpt["aim"])
    run.stage.epoch, run.stage.step, run.history = ckpt["epoch"], ckpt["step"], ckpt["history"]
    ctx.reporter.note(
        f"resumed {run.label} from {ckpt_path} at epoch {run.stage.epoch}, step {run.stage.step}"
    )


def _evaluate(run: _Run, val_loader, recipe, ctx, target_mb, seen_loss, start) -> dict:
    """The epoch's line of ``metrics.jsonl``, with the quantized accuracy on all ranks."""
    quantizer, stage = run.quantizer, run.stage
    acc = ctx.dist.accuracy(run.model, val_loader, ctx.device)  # over all ranks' shards
    record = {
        "stage": recipe.quant.method,  # "diffq", or "uniform" / "lsq" for a baseline
        "mu": run.control.mu,
        "target_mb": target_mb,
        "epoch": stage.epoch,
        "step": stage.step,
        "loss": seen_loss,
        "accuracy": acc,
        "true_mb": quantizer.true_model_size(),
        "model_size": float(quantizer.model_size(file=_aims_file(recipe)).detach()),
        **({"file_mb": quantizer.file_model_size()} if _aims_file(recipe) else {}),
        **moved_groups(run.start_widths, integer_widths(quantizer)),
        "lr": stage.optimizers[0].param_groups[0]["lr"],
        "seconds": time.time() - start,
    }
    run.history.append(record)
    mu = f"mu {human(run.control.mu, 'mu')}, " if recipe.quant.method == "diffq" else ""
    ctx.reporter.note(
        f"{run.label} epoch {stage.epoch}/{recipe.train.epochs} step {stage.step}: {mu}"
        f"loss {human(record['loss'], 'loss')}, quantized accuracy {human(acc, 'pct')}, "
        f"true size {human(record['true_mb'], 'mib')}"
    )
    return record


def _save(run: _Run, ckpt_path: Path, metrics_path: Path, kept: list, mu) -> None:
    optimizer, bits_opt = run.stage.optimizers[0], run.bits_opt
    write_metrics(metrics_path, kept + run.history)
    checkpoint = {
        "model": run.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "bits_optimizer": bits_opt.state_dict(),
        "scaler": run.stage.scaler.state_dict(),
        "noise": run.quantizer.noise_state_dict(),
        "rng": rng_state(),
        "epoch": run.stage.epoch,
        "step": run.stage.step,
        "history": run.history,
        "mu": mu,
        "aim": run.control.state_dict(),
    }
    atomic_write(ckpt_path, torch_bytes(checkpoint))


def _freeze_when_due(run: _Run, recipe, ctx, target_mb) -> None:
    """For the last ``train.freeze_bits`` of the steps: widths frozen and forwards see true
    quantization with a straight-through gradient, so the weights train for the rounding the
    evaluation applies instead of for noise. With a size target the widths are fitted to it
    first (lowered until they fit; with ``train.fill_budget`` also raised while they fit), so
    the frozen phase trains the very widths the artifact keeps and nothing changes after it.
    The widths leave the bits' optimizer; a learned grid's scales stay in it and keep training."""
    stage, quantizer = run.stage, run.quantizer
    train = recipe.train
    freeze_steps = round(stage.total * train.freeze_bits)
    if (freeze_steps and stage.step >= stage.total - freeze_steps
            and hasattr(quantizer, "freeze_bits") and not quantizer.frozen):
        if target_mb is not None:
            # A file target is always filled: the coded size moves with the weights, so the
            # start's margin cannot be trusted to hold, and a file budget is there to be used.
            file_mb = _file_mb(run, recipe, ctx)
            priced = run.sensitivity()
            fit = fit_widths(quantizer, target_mb, train.fill_budget or file_mb is not None,
                             file_mb, priced)
            run.fit = fit
            size = (f"file {fit['file_mb']:.3f} MiB" if "file_mb" in fit
                    else f"true size {fit['true_mb']:.3f} MiB")
            how = "by loss per bit" if priced is not None else "by their real bits"
            ctx.reporter.note(f"{run.label}: widths fitted to the target {how}: "
                              f"{fit['raised']} raised, {fit['lowered']} lowered, {size}")
        quantizer.freeze_bits()
        _drop_widths(run.bits_opt, quantizer)
        run.frozen_size = torch.tensor(quantizer.true_model_size())  # logged from now on
        ctx.reporter.note(f"{run.label}: widths frozen at step {stage.step}, last "
                          f"{stage.total - stage.step} steps train through true quantization")


def _file_mb(run: _Run, recipe, ctx):
    """Aiming at the file: ``() -> MiB`` of the artifact the state now would be written to
    (``ctx.file_mb``, set by the finetune, or the quantizer's estimate); else None."""
    if not _aims_file(recipe):
        return None
    measure = getattr(ctx, "file_mb", None)
    return (lambda: measure(run.quantizer)) if measure else run.quantizer.file_model_size


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


def _finish(run: _Run, val_loader, ctx, target_mb, calibrate, recipe) -> dict:
    """Checks the size target once more (widths are lowered here only when no frozen phase
    fitted them; the accuracy is then measured again) and what the widths learned."""
    run.model.eval()
    late = fit_target(run.quantizer, target_mb, ctx.reporter, _file_mb(run, recipe, ctx),
                      run.label, run.sensitivity() if target_mb is not None else None)
    accuracy = run.history[-1]["accuracy"] if run.history and not late.get("lowered") else None
    if accuracy is None:
        calibrate()
        accuracy = ctx.dist.accuracy(run.model, val_loader, ctx.device)
    fit = late
    if run.fit:
        fit = {**run.fit, **late, "lowered": run.fit["lowered"] + late.get("lowered", 0)}
    moved = moved_groups(run.start_widths, integer_widths(run.quantizer))
    if moved:
        ctx.reporter.note(f"{run.label}: {moved['groups_moved']} of {moved['groups']} groups "
                          f"({100 * moved['moved_fraction']:.0f} %) ended at a width other than "
                          f"their start (mean change {moved['moved_mean_bits']:.2f} bits)")
    return {"quantizer": run.quantizer, "history": run.history, "mu": run.control.mu,
            "fit": fit, "accuracy": accuracy, "moved": moved, "start_widths": run.start_widths}


def train_one(model, recipe, mu, loaders, run_dir: Path, ctx, target_mb=None) -> dict:
    """Fine-tunes ``model`` with DiffQ for one ``mu`` or one size target; returns the metrics.

    Args:
        model: the float model on ``ctx.device``, with the starting weights.
        recipe: the resolved recipe.
        mu: the model-size penalty (with ``target_mb``: ignored, mu is adapted, see ``aim``).
        loaders: (train, val) data loaders.
        run_dir: where ``checkpoint.pt`` and ``metrics.jsonl`` go.
        ctx: run context (``device``, ``reporter``, ``resume``, ``dist``: distributed helpers).
        target_mb: a true-size budget in MiB: mu becomes a Lagrange multiplier and the final
            rounding is made to fit (``diffq_cli.run.targets``, ``quant.budget``).
    """
    train_loader, val_loader = loaders
    run = _setup(model, recipe, mu, target_mb, ctx, train_loader)
    ckpt_path, metrics_path = run_dir / "checkpoint.pt", run_dir / "metrics.jsonl"
    kept = float_records(metrics_path)  # the float stage's epochs stay in the file
    if ctx.resume and ctx.dist.agree(ckpt_path.exists(), str(ckpt_path)):  # every rank loads
        _resume(run, ckpt_path, ctx)

    stage, t = run.stage, recipe.train
    log = run_log(ctx, run.label, t, stage.total, run_dir)
    add_terms = size_term(run, target_mb, _aims_file(recipe))
    bits = functools.partial(mean_bits, run.quantizer)
    # train.bn_recalibrate: BatchNorm statistics of the quantized model, before each evaluation
    calibrate = functools.partial(recalibrate_batchnorm, run.model, train_loader,
                                  t.bn_recalibrate)

    def nan(value):
        return TrainingError(
            f"loss became {value} at step {stage.step} ({run.label}); lower optim.lr or mu. "
            f"The last good checkpoint is kept in {ckpt_path}"
        )

    _freeze_when_due(run, recipe, ctx, target_mb)  # a resumed run may be in that phase
    with ctx.reporter.progress(stage.total - stage.step, run.label) as bar:

        def on_step(value, n, size):
            bar.update(loss=f"{value:.3f}")
            log.step(stage.step, value, stage.optimizers[0].param_groups[0]["lr"], n,
                     size=size, bits=bits)
            _freeze_when_due(run, recipe, ctx, target_mb)

        try:
            while stage.epoch < t.epochs and stage.step < stage.total:
                start = time.time()
                _, mean_loss = run_epoch(stage, train_loader, recipe, ctx, add_terms, on_step, nan)
                calibrate()
                log.epoch(_evaluate(run, val_loader, recipe, ctx, target_mb, mean_loss, start))
                if ctx.dist.is_main:
                    _save(run, ckpt_path, metrics_path, kept, mu)
        finally:
            log.close()  # flushes TensorBoard scalars even when a step fails
    return _finish(run, val_loader, ctx, target_mb, calibrate, recipe)


