"""The run directory, checked before any work: flags, writability, what it already holds.
(The size targets are checked in ``targets.py``.)"""

import re
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


def output_dir(recipe) -> str:
    """``recipe.output``, or ``runs/<model>-<dataset>-mu<mu>`` (several mu joined by '_'), or
    ``runs/<model>-<dataset>-target<X>MB`` with size targets."""
    if recipe.output:
        return recipe.output
    t = recipe.train
    runs = f"target{'_'.join(f'{x:g}' for x in t.target_mb)}MiB" if t.target_mb else (
        "mu" + "_".join(f"{mu:g}" for mu in t.mu))
    slug = f"{recipe.model.name}-{recipe.data.dataset}-{runs}"
    return f"runs/{re.sub(r'[^A-Za-z0-9._+-]+', '-', slug)}"
