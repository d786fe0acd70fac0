"""What each finetune run leaves behind: its artifact, its bits picture, its table row, and
the size its file would have (for ``--size file``).

``job`` is the finetune's ``_Job`` (recipe, context, model spec, data info, float size)."""

from pathlib import Path

from diffq_cli.config.load import recipe_to_dict
from diffq_cli.files.artifact import artifact_bytes, save_artifact
from diffq_cli.quant.budget import integer_widths
from diffq_cli.units import compression, mib


def row_of(metrics: dict) -> dict:
    keys = ("method", "label", "mu", "target_mb", "accuracy", "delta", "true_mb", "artifact_mb",
            "compression", "mean_bits", "bits", "moved_fraction", "file_estimate_mb",
            "file_table_mb")
    return {k: metrics.get(k) for k in keys}


def save_run(job, run_dir: Path, label, target, result, state, sizes) -> dict:
    """The run's artifact and bits picture; its metrics (as in summary.json)."""
    quantizer = result["quantizer"]
    metrics = {
        "method": {"uniform": "qat"}.get(job.recipe.quant.method, job.recipe.quant.method),
        "label": label,
        "mu": result["mu"],
        "target_mb": target,
        "float_accuracy": job.float_acc,
        "accuracy": result["accuracy"],
        "float_mb": job.float_mb,
        "true_mb": quantizer.true_model_size(),
        "mean_bits": sizes["mean_bits"],
        "epochs": len(result["history"]),
    }
    if target is not None:
        metrics["groups_lowered"] = result["fit"].get("lowered", 0)
    metrics.update(result.get("moved", {}))  # what the widths learned (DiffQ)
    # The coded file's size as estimated from the levels (quant/coded.py), beside the real one
    # written below: how well --size file can aim.
    metrics["file_estimate_mb"] = quantizer.file_model_size()
    if job.recipe.quant.method == "diffq":  # the tables' estimate too, at the integer widths
        tables = quantizer.refresh_file_tables()  # the file holds
        metrics["file_table_mb"] = tables.widths_mb(quantizer.quantized,
                                                    integer_widths(quantizer))
    metrics.update(write_artifact(job, run_dir / "model.th", state, job.recipe, metrics))
    if job.ctx.dist.is_main:
        draw_bits(run_dir / "bits.svg", state, f"{job.title}, {label}",
                  result.get("start_widths"))
    metrics["delta"] = result["accuracy"] - job.versus
    return metrics


def write_artifact(job, path: Path, state: dict, recipe, metrics: dict) -> dict:
    """Saves a run's artifact (the main process only) and returns the fields that describe
    it in the run's row: path, size and compression."""
    nbytes = 0
    if job.ctx.dist.is_main:
        nbytes = save_artifact(path, state, job.model_spec, job.info, recipe_to_dict(recipe),
                               metrics)
    return {"artifact": str(path), "artifact_mb": mib(nbytes), "artifact_bytes": nbytes,
            "compression": compression(job.float_mb, mib(nbytes))}


def draw_bits(path: Path, state: dict, title: str, start: list | None = None) -> None:
    from diffq_cli.files.plots import bits_svg

    if state["quantized"]:
        bits_svg(path, state, title, start)


# The fields of a run's metrics, valued: a measured file carries metadata of about this size.
_METRICS = dict.fromkeys(("method", "label", "mu", "target_mb", "float_accuracy", "accuracy",
                          "float_mb", "true_mb", "mean_bits", "epochs", "groups_lowered",
                          "groups", "groups_moved", "moved_fraction", "moved_mean_bits"), 0.125)


def file_mb_of(job):
    """``quantizer -> MiB``: the artifact its state would make now (coded and gzipped in
    memory, with this run's metadata); what a file target (``--size file``) is held to."""
    recipe = recipe_to_dict(job.recipe)

    def measure(quantizer) -> float:
        blob = artifact_bytes(quantizer.get_quantized_state(), job.model_spec, job.info, recipe,
                              _METRICS)
        return mib(len(blob))

    return measure
