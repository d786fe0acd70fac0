"""``diffq finetune``: data, model, float baseline, one DiffQ run per mu, artifacts, summary."""

import dataclasses
import json
import time
from pathlib import Path

from diffq_cli.artifact import atomic_write, save_artifact
from diffq_cli.recipe import dump_recipe, output_dir, recipe_to_dict

MB = 2**20


class RunContext:
    """What the loop needs besides the recipe: device, output, distributed helpers, hooks."""

    def __init__(self, device, reporter, dist, resume: bool):
        self.device, self.reporter, self.dist, self.resume = device, reporter, dist, resume

    def after_epoch(self, epoch: int) -> None:
        """Called after each epoch's checkpoint (tests use it to simulate an interruption)."""


def _float_mb(model) -> float:
    return sum(p.numel() for p in model.parameters()) * 4 / MB


def _float_stage(model, recipe, train_loader, run_dir: Path, ctx) -> None:
    """Float pre-training, saved as ``float.pt`` so that ``--resume`` does not redo it."""
    import torch

    from diffq_cli.artifact import torch_bytes
    from diffq_cli.train import train_float

    path = run_dir / "float.pt"
    if ctx.resume and ctx.dist.agree(path.exists(), str(path)):
        model.load_state_dict(torch.load(path, map_location=ctx.device, weights_only=True))
        ctx.reporter.note(f"resumed: float weights from {path}")
        return
    train_float(model, recipe, train_loader, ctx)
    if ctx.dist.is_main:
        atomic_write(path, torch_bytes(model.state_dict()))


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuses contradictory flags, an unwritable output, a resume with nothing to resume, and
    a silent replacement of an earlier run's results: all before any work is done."""
    from diffq_cli.artifact import check_writable
    from diffq_cli.errors import InputError

    if resume and overwrite:
        raise InputError("--resume continues a run and --overwrite replaces it; pass only one")
    check_writable(run_dir, "run directory")
    found = [p for name in ("checkpoint.pt", "float.pt", "model.th")
             for p in sorted(run_dir.glob(f"**/{name}"))] if run_dir.is_dir() else []
    # A finished run has summary.json and, unless --keep-checkpoint, no checkpoint.pt left.
    done = (run_dir / "summary.json").is_file() and not any(p.name == "checkpoint.pt"
                                                              for p in found)
    if resume and (done or not any(p.name != "model.th" for p in found)):
        finished = f" (it holds a finished run's {found[0].name})" if found else ""
        raise InputError(
            f"--resume: {run_dir} holds no checkpoint to resume{finished}; drop --resume to "
            "start a new run, or pass the --output of an interrupted run"
        )
    if found and not (resume or overwrite):
        raise InputError(
            f"{run_dir} already holds a run ({found[0].name}); pass --resume to continue it, "
            "--overwrite to replace it, or --output DIR to write elsewhere"
        )


def finetune(recipe, reporter, resume: bool = False, overwrite: bool = False,
             keep_checkpoint: bool = False) -> dict:
    """Runs a resolved recipe; returns the summary (also written to ``summary.json``).

    ``checkpoint.pt`` (optimizer state: several times the model) is deleted once a run has
    finished, unless ``keep_checkpoint``; ``float.pt`` stays as the float starting point."""
    import torch

    from diffq_cli import distributed
    from diffq_cli.data import DataSpec, build_loaders
    from diffq_cli.models import create_model
    from diffq_cli.quant.summary import summarize_state
    from diffq_cli.train import train_one

    started = time.time()
    device = distributed.resolve_device(recipe.train.device)
    distributed.check_precision(recipe.train.amp, device)
    dist = distributed.setup(device)
    if not dist.is_main:  # only rank 0 prints
        reporter.enabled = False
        reporter.err.quiet = reporter.out.quiet = True
    torch.manual_seed(recipe.train.seed)
    run_dir = Path(output_dir(recipe))
    _check_run_dir(run_dir, resume, overwrite)

    spec = DataSpec(**dataclasses.asdict(recipe.data), seed=recipe.train.seed)
    train_loader, val_loader, info = build_loaders(spec, distributed=dist.distributed)
    m = recipe.model

    def fresh_model(with_weights: bool = False):
        net = create_model(
            m.name,
            source=m.source,
            num_classes=info["num_classes"],
            in_chans=info["in_chans"],
            pretrained=m.pretrained and with_weights,
            weights=m.weights if with_weights else None,
            input_size=info["input_size"],
        )
        return net

    model = fresh_model(with_weights=True)  # the per-mu copies get start_weights instead
    for note in getattr(model, "diffq_notes", []):
        reporter.note(note)
    model_spec = dict(model.diffq_spec)
    # The run directory appears only once data and model are known good: a run that fails on
    # bad input leaves nothing behind.
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.yaml", dump_recipe(recipe).encode())
    model.to(device)
    if recipe.train.float_epochs:
        _float_stage(
            model, recipe, train_loader, run_dir, RunContext(device, reporter, dist, resume)
        )
    start_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    float_acc = dist.accuracy(model, val_loader, device)
    float_mb = _float_mb(model)
    reporter.note(
        f"{m.name} on {info['dataset']}: float accuracy {float_acc:.2f}%, "
        f"{float_mb:.2f} MB as float32"
    )
    runs, rows = (
        [],
        [
            {
                "label": "float",
                "accuracy": float_acc,
                "delta": 0.0,
                "true_mb": float_mb,
                "artifact_mb": None,
                "compression": 1.0,
                "mean_bits": 32.0,
            }
        ],
    )
    layers, mu_dirs = [], []
    for mu in recipe.train.mu:
        # Every mu starts from the same weights: a fresh model, not the previous run's.
        model = fresh_model()
        model.load_state_dict(start_weights)
        model.to(device)
        if recipe.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        mu_dir = run_dir if len(recipe.train.mu) == 1 else run_dir / f"mu{mu:g}"
        mu_dirs.append(mu_dir)
        if dist.is_main:
            mu_dir.mkdir(parents=True, exist_ok=True)
        ctx = RunContext(device, reporter, dist, resume)
        result = train_one(model, recipe, mu, (train_loader, val_loader), mu_dir, ctx)
        quantizer = result["quantizer"]
        state = quantizer.get_quantized_state()
        dist.debug_dump(state, model)  # a test hook; does nothing unless its env var is set
        sizes = summarize_state(state)
        metrics = {
            "mu": mu,
            "float_accuracy": float_acc,
            "accuracy": result["accuracy"],
            "float_mb": float_mb,
            "true_mb": quantizer.true_model_size(),
            "mean_bits": sizes["mean_bits"],
            "epochs": len(result["history"]),
        }
        artifact = mu_dir / "model.th"
        nbytes = 0
        if dist.is_main:
            nbytes = save_artifact(
                artifact, state, model_spec, info, recipe_to_dict(recipe), metrics
            )
        metrics.update(
            artifact=str(artifact),
            artifact_mb=nbytes / MB,
            compression=float_mb / (nbytes / MB) if nbytes else None,
            delta=result["accuracy"] - float_acc,
        )
        runs.append(metrics)
        rows.append(
            {
                "label": f"{mu:g}",
                "accuracy": metrics["accuracy"],
                "delta": metrics["delta"],
                "true_mb": metrics["true_mb"],
                "artifact_mb": metrics["artifact_mb"],
                "compression": metrics["compression"],
                "mean_bits": metrics["mean_bits"],
            }
        )
        layers = [row for row in sizes["layers"] if row["name"] in state["quantized"]]
        last_mu = mu
        quantizer.detach()

    summary = {
        "recipe": recipe.name,
        "model": m.name,
        "dataset": info["dataset"],
        "run_dir": str(run_dir),
        "float": {"accuracy": float_acc, "mb": float_mb},
        "runs": runs,
        "seconds": time.time() - started,
    }
    if dist.is_main:
        atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2).encode())
        if not keep_checkpoint:  # only now: an interrupted sweep resumes its finished mu runs
            for mu_dir in mu_dirs:
                (mu_dir / "checkpoint.pt").unlink(missing_ok=True)
    if not reporter.json_mode:
        reporter.tradeoff_table(rows)
        reporter.layer_table(layers, f"Bits per quantized layer (mu={last_mu:g})")
    dist.close()
    return summary
