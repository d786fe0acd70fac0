"""Checks a finetune makes before any work: the run directory (flags, writability, what it
already holds) and the size targets (none below the reachable floor)."""

from pathlib import Path


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuses contradictory flags, an unwritable output, a resume with nothing to resume, and
    a silent replacement of an earlier run's results: all before any work is done."""
    from diffq_cli.errors import InputError
    from diffq_cli.fileio import check_writable

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


def size_bounds(model, recipe) -> tuple[float, float]:
    """(floor, size at init_bits) in MB: every group at min_bits / init_bits, plus the floats."""
    from diffq_cli.quant.budget import size_at_bits, size_floor
    from diffq_cli.run.steps import build_quantizer

    quantizer = build_quantizer(model, recipe.quant)
    try:
        return size_floor(quantizer), size_at_bits(quantizer, quantizer.init_bits)
    finally:
        quantizer.detach()


def check_targets(model, recipe, reporter) -> None:
    """Exit 2 before any training when a target is below the reachable floor."""
    from diffq_cli.errors import InputError

    floor, at_init = size_bounds(model, recipe)
    q, low = recipe.quant, min(recipe.train.target_mb)
    if low < floor:
        raise InputError(
            f"--target-mb {low:g} is below the smallest reachable size {floor:.3f} MiB (every "
            f"group at quant.min_bits={q.min_bits}, plus the tensors kept in float); "
            f"{at_init:.3f} MiB at quant.init_bits={q.init_bits}. Raise the target, or lower "
            "quant.min_bits / quant.min_size (fewer float tensors)"
        )
    reporter.note(f"size targets: floor {floor:.3f} MiB (min_bits={q.min_bits}), "
                  f"{at_init:.3f} MiB at init_bits={q.init_bits}")
