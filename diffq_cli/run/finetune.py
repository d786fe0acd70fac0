"""``diffq finetune``: data, model, float baseline, one DiffQ run per mu, artifacts, summary."""

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from diffq_cli.config.load import dump_recipe
from diffq_cli.fileio import atomic_write, plain_json
from diffq_cli.run.outputs import file_mb_of, row_of, save_run, write_artifact
from diffq_cli.run.rundir import check_run_dir, output_dir
from diffq_cli.run.targets import check_targets
from diffq_cli.units import human, mib


class RunContext:
    """What the loop needs besides the recipe: device, output, distributed helpers."""

    def __init__(self, device, reporter, dist, resume: bool):
        self.device, self.reporter, self.dist, self.resume = device, reporter, dist, resume
        self.file_mb = None  # quantizer -> MiB of the artifact it would make (outputs.py)


def _float_mb(model) -> float:
    return mib(sum(p.numel() for p in model.parameters()) * 4)


@dataclass
class _Job:
    """What every step of a finetune shares: the recipe, where and how to run, the data, the
    starting model and its float baseline."""

    recipe: object
    reporter: object
    ctx: RunContext
    run_dir: Path
    loaders: tuple
    info: dict
    start_weights: dict | None = None
    model_spec: dict | None = None
    float_acc: float = 0.0
    float_mb: float = 0.0
    reference_acc: float | None = None  # the float model fine-tuned as long (--baseline float)
    reference_row: dict | None = None  # one seed's float reference row
    rows: list = dataclasses.field(default_factory=list)  # one seed's other fine-tuned rows

    @property
    def versus(self) -> float:
        """The accuracy "vs float" compares with: the float reference's, else the start's."""
        return self.float_acc if self.reference_acc is None else self.reference_acc

    def fresh_model(self, weights=None):
        """The recipe's model for this dataset; with ``weights``, every run starts from the
        same weights, not the previous run's."""
        import torch

        from diffq_cli.models.factory import create_model

        m, info = self.recipe.model, self.info
        net = create_model(
            m.name,
            source=m.source,
            num_classes=info["num_classes"],
            in_chans=info["in_chans"],
            pretrained=m.pretrained if weights is None else False,
            weights=m.weights if weights is None else None,
            input_size=info["input_size"],
        )
        if weights is not None:
            net.load_state_dict(weights)
        net.to(self.ctx.device)
        return net.to(memory_format=torch.channels_last) if self.recipe.train.channels_last \
            else net

    def accuracy(self, net) -> float:
        return self.ctx.dist.accuracy(net, self.loaders[1], self.ctx.device)

    @property
    def size_key(self) -> str:
        """The rows' size that targets, marks and verdicts go by: the file's with
        ``--size file``, else the true size."""
        return "artifact_mb" if self.recipe.train.target_size == "file" else "true_mb"

    @property
    def title(self) -> str:
        return f"{self.recipe.model.name} on {self.info['dataset']}"


def finetune(recipe, reporter, resume: bool = False, overwrite: bool = False,
             keep_checkpoint: bool = False) -> dict:
    """Runs a resolved recipe; returns the summary (also written to ``summary.json``).

    Steps: set up (device, checks, data), the starting model (float stage and float baseline),
    the post-training baselines, one DiffQ run per mu or size target, the trained baselines
    (uniform QAT, LSQ) if asked, then the summary, pictures and tables. ``checkpoint.pt``
    (optimizer state: several times the model) is deleted once everything has finished, unless
    ``keep_checkpoint``; ``float.pt`` stays as the float starting point. With ``train.seeds``
    N, every fine-tuned row runs once per seed (``_fine_tuned``) and the rows are their means."""
    from diffq_cli.errors import GateError
    from diffq_cli.run import baselines

    started = time.time()
    job = _setup(recipe, reporter, resume, overwrite)
    model = _start(job)
    rows = [{"method": "float", "label": "float32", "accuracy": job.float_acc, "delta": 0.0,
             "true_mb": job.float_mb, "compression": 1.0, "mean_bits": 32.0}]
    file = job.size_key == "artifact_mb"
    if "none" not in recipe.train.baseline:
        calibrate = baselines.bn_calibration(recipe.train.bn_recalibrate, job.loaders[0])
        rows += baselines.ptq_rows(model, recipe.quant, job.accuracy, calibrate=calibrate,
                                   file_mb=job.ctx.file_mb if file else None)
    # Every fine-tuned row once per seed, from the same float model (PTQ rows: once).
    by_seed, runs, layers, last = [], [], [], ""
    table = None  # one table of uniform sizes serves every trained baseline and seed
    if set(recipe.train.trained_baselines()) & {"qat", "lsq"}:
        table = baselines.uniform_sizes(job.fresh_model(job.start_weights), recipe.quant,
                                        file=file)
    for index in range(recipe.train.seeds):
        seeded, seed_runs, seed_layers, seed_last = _fine_tuned(job, index, table)
        by_seed.append(seeded)
        runs += seed_runs
        if index == 0:  # the table's artifacts, layers and verdict paths are seed 0's
            layers, last = seed_layers, seed_last
    references = [[s.reference_row] for s in by_seed if s.reference_row]
    if references:  # right under the start: "vs float" is measured against it
        rows[1:1] = baselines.across_seeds(references)
        job.reference_acc = rows[1]["accuracy"]
    rows += baselines.across_seeds([s.rows for s in by_seed])
    summary = _summarize(job, runs, rows, started)
    if not keep_checkpoint:  # only now: an interrupted sweep resumes its finished runs
        for path in job.run_dir.glob("**/checkpoint.pt"):
            path.unlink(missing_ok=True)
    if not reporter.json_mode:
        reporter.tradeoff_table(rows)
        reporter.verdicts(summary["verdicts"])
        reporter.layer_table(layers, f"Bits per quantized layer ({last})")
    job.ctx.dist.close()
    key, kind = job.size_key, "file" if file else "true size"
    missed = [r for r in runs if r["target_mb"] is not None and r[key] > r["target_mb"]]
    if missed:
        raise GateError("; ".join(
            f"target {r['target_mb']:g} MiB missed by {r[key] - r['target_mb']:.4f} MiB "
            f"({kind} {r[key]:.4f} MiB)" for r in missed))
    return summary


def _setup(recipe, reporter, resume: bool, overwrite: bool) -> _Job:
    """Device and process group, the run directory's checks, the data: all before any work."""
    import torch

    from diffq_cli.data.loaders import build_loaders
    from diffq_cli.run import distributed

    device = distributed.resolve_device(recipe.train.device)
    distributed.check_precision(recipe.train.amp, device)
    dist = distributed.setup(device)
    if not dist.is_main:  # only rank 0 prints
        reporter.silence()
    torch.manual_seed(recipe.train.seed)
    run_dir = Path(output_dir(recipe))
    check_run_dir(run_dir, resume, overwrite)
    train_loader, val_loader, info = build_loaders(recipe.data, dist.distributed,
                                                   recipe.train.seed)
    return _Job(recipe, reporter, RunContext(device, reporter, dist, resume), run_dir,
                (train_loader, val_loader), info)


def _start(job: _Job):
    """The starting model: built (and its notes shown), targets checked, the run directory
    created, the float stage run; its weights and float accuracy kept for every run."""
    recipe, reporter, t = job.recipe, job.reporter, job.recipe.train
    model = job.fresh_model()
    for note in getattr(model, "diffq_notes", []):
        reporter.note(note)
    job.model_spec = dict(model.diffq_spec)
    job.ctx.file_mb = file_mb_of(job)
    if t.target_mb:
        check_targets(model, recipe, reporter)  # before any training
    # The run directory appears only once data, model and targets are known good: a run that
    # fails on bad input leaves nothing behind.
    if job.ctx.dist.is_main:
        job.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(job.run_dir / "config.yaml", dump_recipe(recipe).encode())
        if not job.ctx.resume:  # an earlier run's epochs (even float-stage ones) are not ours
            (job.run_dir / "metrics.jsonl").unlink(missing_ok=True)
    if t.float_epochs:
        from diffq_cli.run.train import float_start

        float_start(model, recipe, job.loaders[0], job.run_dir, job.ctx)
    job.start_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    job.float_acc = job.accuracy(model)
    job.float_mb = _float_mb(model)
    reporter.note(f"{job.title}: float accuracy {job.float_acc:.2f}%, "
                  f"{job.float_mb:.2f} MiB as float32")
    return model


def _diffq_runs(job: _Job) -> tuple[list, list, str]:
    """One DiffQ run per mu or size target, each from the starting weights: (metrics per run,
    the last run's layer rows, its label)."""
    from diffq_cli.quant.summary import summarize_state
    from diffq_cli.run.train import run_label, train

    t = job.recipe.train
    plans = [(None, x) for x in t.target_mb] or [(mu, None) for mu in t.mu]
    runs, layers, last = [], [], ""
    for mu, target in plans:
        label = run_label(job.recipe.quant, mu, target, t.target_size)
        sub = f"mu{mu:g}" if target is None else f"target{target:g}MiB"
        run_dir = job.run_dir if len(plans) == 1 else job.run_dir / sub
        if job.ctx.dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        result = train(job.fresh_model(job.start_weights), job.recipe, job.loaders, run_dir,
                       job.ctx, mu=mu, target_mb=target)
        quantizer = result["quantizer"]
        state = quantizer.get_quantized_state()
        sizes = summarize_state(state)
        runs.append(save_run(job, run_dir, label, target, result, state, sizes))
        layers = [row for row in sizes["layers"] if row["name"] in state["quantized"]]
        last = label
        quantizer.detach()
    return runs, layers, last


def _summarize(job: _Job, runs: list, rows: list, started: float) -> dict:
    """Deltas, collapse flags and best marks on the rows; ``summary.json`` and
    ``tradeoff.svg``; a warning per collapsed row."""
    from diffq_cli.run import baselines

    t = job.recipe.train
    classes = job.info["num_classes"]
    for row in rows:
        row["delta"] = None if row.get("accuracy") is None else row["accuracy"] - job.versus
        row["collapsed"] = baselines.collapsed(row.get("accuracy"), classes)
    key = job.size_key
    if key == "artifact_mb":  # the float row's file: its float32 weights
        rows[0]["artifact_mb"] = job.float_mb
    baselines.mark_best(rows, key=key)
    baselines.mark_beaten(rows, key=key)
    summary = {
        "recipe": job.recipe.name,
        "model": job.recipe.model.name,
        "dataset": job.info["dataset"],
        "run_dir": str(job.run_dir),
        "float": {"accuracy": job.float_acc, "mb": job.float_mb,
                  "reference_accuracy": job.reference_acc},
        "runs": runs,
        "baselines": [r for r in rows if r["method"] in baselines.BASELINES],
        "table": rows,
        "size": "file" if key == "artifact_mb" else "true",
        "verdicts": (baselines.paired_verdicts(rows, key=key) if t.seeds > 1
                     else baselines.verdicts(rows, key=key)),
        "seeds": {"count": t.seeds, "seeds": [t.seed + i for i in range(t.seeds)],
                  "artifacts": "model.th files are seed 0's (train.seed); seed i's are in "
                               "seed<i>/" if t.seeds > 1 else "model.th"},
        "seconds": time.time() - started,
    }
    if job.ctx.dist.is_main:
        atomic_write(job.run_dir / "summary.json",
                     json.dumps(plain_json(summary), indent=2).encode())
        from diffq_cli.files.plots import tradeoff_svg

        tradeoff_svg(job.run_dir / "tradeoff.svg", rows, job.title, key=key)
    for row in rows:
        if row["collapsed"]:
            job.reporter.warn(
                f"{row['method']} {row['label']}: accuracy {human(row['accuracy'], 'pct')} is "
                f"at chance level ({human(100 / classes, 'pct')}): collapsed")
    return summary


def _fine_tuned(job: _Job, index: int, table: dict | None):
    """Seed ``index``'s fine-tuned rows (the float reference, DiffQ's runs, QAT / LSQ) in a
    copy of ``job`` with ``train.seed + index`` and its own directory (``seed<index>/``, the run
    directory itself for seed 0): (that job, with ``rows`` set, DiffQ's run metrics, the last
    run's layer rows and label; ``table``: the uniform sizes the QAT / LSQ widths are chosen
    from)."""
    recipe = job.recipe
    if index:
        train_cfg = dataclasses.replace(recipe.train, seed=recipe.train.seed + index)
        recipe = dataclasses.replace(recipe, train=train_cfg)
    seeded = dataclasses.replace(job, recipe=recipe, run_dir=job.run_dir / f"seed{index}"
                                 if index else job.run_dir)
    trained = recipe.train.trained_baselines()
    seeded.reference_row = _reference_row(seeded) if "float" in trained else None
    runs, layers, last = _diffq_runs(seeded)
    seeded.rows = [row_of(metrics) for metrics in runs]
    for method in (m for m in trained if m != "float"):
        seeded.rows += _trained_rows(seeded, runs, method, table)
    return seeded, runs, layers, last


def _reference_row(job: _Job) -> dict:
    """The float model fine-tuned with the recipe and steps of the quantized runs and no
    quantizer (in ``float-reference/``): what quantization costs is measured against it."""
    from diffq_cli.run.train import train

    run_dir = job.run_dir / "float-reference"
    if job.ctx.dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    result = train(job.fresh_model(job.start_weights), job.recipe, job.loaders, run_dir,
                   job.ctx, stage="reference")
    job.reference_acc = result["accuracy"]
    job.reporter.note(f"{job.title}: float reference (fine-tuned as long, no quantizer) "
                      f"{job.reference_acc:.2f}%")
    return {"method": "float", "label": "fine-tuned", "accuracy": job.reference_acc,
            "true_mb": job.float_mb, "compression": 1.0, "mean_bits": 32.0}


def _trained_rows(job: _Job, runs: list, method: str, table: dict) -> list:
    """The baseline ``method`` (``qat``: uniform QAT, or ``lsq``) at the width whose uniform
    size (``table``: ``baselines.uniform_sizes``) is nearest each DiffQ result's, same epochs;
    each in ``<method><bits>/``."""
    from diffq_cli.run import baselines
    from diffq_cli.run.train import train

    widths = baselines.baseline_widths(table, [r[job.size_key] for r in runs],
                                       min_bits=2 if method == "lsq" else 1)  # LSQ: signed
    rows = []
    for bits in widths:
        recipe = baselines.baseline_recipe(job.recipe, method, bits)
        run_dir = job.run_dir / f"{method}{bits}"
        result = train(job.fresh_model(job.start_weights), recipe, job.loaders, run_dir,
                       job.ctx)
        quantizer = result["quantizer"]
        row = {"method": method, "label": f"{bits} bits", "bits": bits,
               "accuracy": result["accuracy"], "true_mb": quantizer.true_model_size(),
               "mean_bits": float(bits)}
        # Its own artifact, like a DiffQ run's: comparable file size, and usable as is
        # (eval, export) when the verdict says to prefer it.
        metrics = {**row, "float_accuracy": job.float_acc, "float_mb": job.float_mb}
        row.update(write_artifact(job, run_dir / "model.th",
                                   quantizer.get_quantized_state(), recipe, metrics))
        rows.append(row)
        quantizer.detach()
    return rows
