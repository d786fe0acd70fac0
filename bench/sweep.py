"""Sweep driver: runs ``diffq finetune`` per seed and prints DiffQ against the best baseline.

    python bench/sweep.py bench/specs/three-pairs.yaml          # run what is missing, then report
    python bench/sweep.py bench/specs/three-pairs.yaml --report # report only, run nothing
    python bench/sweep.py --name smoke --target-mb 6 --baseline qat --seeds 0 1 \\
        --max-steps 3 --out /tmp/sweep                          # one run, no spec file

A spec (YAML or JSON) names the runs; keys at the top level are defaults for every run::

    out: bench/out/three-pairs        # results: OUT/NAME/seedS/ (summary.json) and seedS.log
    seeds: [0, 1, 2]
    runs:
      - name: resnet18-fm
        recipe: fashion-mnist-resnet18
        targets: [2.702, 4.031, 5.362]  # --target-mb values
        baseline: all                 # none | ptq | qat | lsq | all: the product's --baseline
        args: [--epochs, "1"]         # any other finetune options
        set: [data.train_subset=3200] # key=value recipe overrides
        weights: bench/out/fm60k/float.pt   # optional: start every seed from this float model
      - name: resnet18-fm-freeze0     # a variant, DiffQ only:
        float_from: resnet18-fm       # that run's float model,
        compare_with: resnet18-fm     # its baseline rows (same seeds)
        baseline: none
        set: [train.freeze_bits=0]

Each (run, seed) is one ``python -m diffq_cli finetune ... train.seed=S --output
OUT/NAME/seedS --json`` call. A run directory holding ``summary.json`` is finished and skipped,
so an interrupted sweep resumes. Without ``weights`` the first seed trains the float model and
the other seeds start from its ``float.pt`` (``train.float_epochs=0``): one float model, seeds
of the fine-tuning, as every table in docs/benchmarks.md. ``float_from: NAME`` starts every
seed from run NAME's float model; ``compare_with: NAME`` compares with run NAME's baseline rows
of the same seed instead of the run's own.

The report (printed, and written to OUT/report.md): every row of the finetune tables, mean ±
sd over seeds; then per DiffQ row the best baseline (PTQ, uniform QAT, LSQ; by mean accuracy,
not collapsed) at most 1.02x its size, by true size and by file size, with the paired
difference per seed.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SLACK = 1.02  # "at the same size or smaller", as the finetune verdict counts it
BASELINES = ("ptq", "qat", "lsq")
RUN_KEYS = {"name", "recipe", "model", "targets", "baseline", "args", "set", "weights",
            "float_from", "compare_with", "seeds"}


# ----------------------------------------------------------------------------- statistics
def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for fewer than two values).

    >>> mean_sd([1.0, 2.0, 3.0])
    (2.0, 1.0)
    """
    if not values:
        raise ValueError("mean_sd needs at least one value")
    sd = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), sd


def paired(ours: list[float], theirs: list[float]) -> list[float]:
    """Per-seed differences ``ours[i] - theirs[i]`` (the same seeds, in the same order)."""
    if len(ours) != len(theirs):
        raise ValueError(f"paired differences need as many values on each side, got "
                         f"{len(ours)} and {len(theirs)}")
    return [a - b for a, b in zip(ours, theirs, strict=True)]


def fmt(values: list[float], signed: bool = False) -> str:
    """``mean ± sd (v1, v2, ...)``, two decimals; no ± for a single value."""
    m, sd = mean_sd(values)
    f = "{:+.2f}" if signed else "{:.2f}"
    head = f.format(m) + ("" if sd is None else f" ± {sd:.2f}")
    return head if len(values) == 1 else f"{head} ({', '.join(f.format(v) for v in values)})"


def group_rows(summaries: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The finetune tables of several seeds (``summary.json`` documents, one per seed) grouped
    by (method, label); only rows present in every seed, so that each group pairs by seed."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for summary in summaries:
        for row in summary["table"]:
            groups.setdefault((row["method"], row["label"]), []).append(row)
    return {key: rows for key, rows in groups.items() if len(rows) == len(summaries)}


def best_baseline(diffq: list[dict], groups: dict, key: str, slack: float = SLACK):
    """The baseline group (PTQ, QAT or LSQ rows, one per seed) with the highest mean accuracy
    whose mean size ``key`` (``true_mb`` or ``artifact_mb``) is at most ``slack`` x the DiffQ
    group's; collapsed groups (chance level on any seed) never count. ``(method, label), rows``
    or None."""
    if any(r.get(key) is None for r in diffq):
        return None
    cap = statistics.fmean(r[key] for r in diffq) * slack
    found = None
    for (method, label), rows in groups.items():
        if method not in BASELINES or any(
                r.get(key) is None or r.get("accuracy") is None or r.get("collapsed")
                for r in rows):
            continue
        if statistics.fmean(r[key] for r in rows) > cap:
            continue
        acc = statistics.fmean(r["accuracy"] for r in rows)
        if found is None or acc > statistics.fmean(r["accuracy"] for r in found[1]):
            found = ((method, label), rows)
    return found


# ----------------------------------------------------------------------------------- spec
def load_spec(path: str | None, a) -> dict:
    """The spec file (or an empty one), with the command line's settings on top."""
    spec = {}
    if path:
        import yaml  # JSON is YAML too

        spec = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a spec is a mapping (out, seeds, runs, ...)")
    spec = {**spec, **{k: v for k, v in (("out", a.out), ("seeds", a.seeds)) if v is not None}}
    defaults = {k: v for k, v in spec.items() if k in RUN_KEYS}
    runs = spec.get("runs") or []
    if a.name or not runs:
        runs = [{"name": a.name or "sweep"}]
    cli = {k: v for k, v in (("recipe", a.recipe), ("model", a.model), ("targets", a.target_mb),
                             ("baseline", a.baseline), ("weights", a.weights)) if v is not None}
    out = []
    for run in runs:
        unknown = set(run) - RUN_KEYS
        if unknown:
            raise ValueError(f"run {run.get('name')!r}: unknown keys {sorted(unknown)}; "
                             f"known: {sorted(RUN_KEYS)}")
        if "name" not in run:
            raise ValueError(f"every run needs a name: {run}")
        merged = {**defaults, **run, **cli}
        merged["set"] = [*defaults.get("set", []), *run.get("set", []), *a.set]
        merged["args"] = [*defaults.get("args", []), *run.get("args", [])]
        merged.setdefault("seeds", [0, 1, 2])
        out.append(merged)
    names = [r["name"] for r in out]
    for run in out:
        for key in ("float_from", "compare_with"):
            if run.get(key) and run[key] not in names:
                raise ValueError(f"run {run['name']!r}: {key} {run[key]!r} is not a run of "
                                 f"the spec ({', '.join(names)})")
    return {"out": Path(spec.get("out") or "bench/out/sweep"), "runs": out}


def finetune_command(run: dict, seed: int, out: Path, weights: str | None,
                     max_steps: int | None) -> list[str]:
    """The ``diffq finetune`` call of one run and seed."""
    cmd = [sys.executable, "-m", "diffq_cli", "finetune"]
    for flag, key in (("--recipe", "recipe"), ("--model", "model"), ("--baseline", "baseline")):
        if run.get(key) is not None:
            cmd += [flag, str(run[key])]
    cmd += [f"--target-mb={x:g}" for x in run.get("targets") or []]
    cmd += [str(x) for x in run["args"]]
    if max_steps is not None:
        cmd += ["--max-steps", str(max_steps)]
    if weights:
        cmd += ["--weights", weights]
    # After the run's overrides, so that they win: no float stage on a given float model.
    start = ["train.float_epochs=0"] if weights else []
    return [*cmd, "--output", str(out), "--overwrite", "--json",
            *run["set"], *start, f"train.seed={seed}"]


def run_dir(out: Path, run: dict, seed: int) -> Path:
    return out / run["name"] / f"seed{seed}"


def float_weights(out: Path, run: dict, by_name: dict, seed: int) -> str | None:
    """The float model a seed starts from: the run's (or its ``float_from``'s) ``weights``,
    else that run's first seed's ``float.pt``; None for the seed that trains it."""
    owner = by_name[run["float_from"]] if run.get("float_from") else run
    if owner.get("weights"):
        return str(owner["weights"])
    first = owner["seeds"][0]
    if owner is run and seed == first:
        return None
    return str(run_dir(out, owner, first) / "float.pt")


def execute(spec: dict, max_steps: int | None, dry_run: bool) -> None:
    """Runs every (run, seed) without a ``summary.json``; runs that train a float model first."""
    out, runs = spec["out"], spec["runs"]
    by_name = {r["name"]: r for r in runs}
    for run in sorted(runs, key=lambda r: bool(r.get("float_from"))):
        for seed in run["seeds"]:
            target = run_dir(out, run, seed)
            if (target / "summary.json").is_file():
                continue
            cmd = finetune_command(run, seed, target,
                                   float_weights(out, run, by_name, seed), max_steps)
            print(" ".join(cmd[1:]), file=sys.stderr)
            if dry_run:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target.parent / f"seed{seed}.log", "w") as log:
                done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=log, check=False)
            print(f"{run['name']} seed {seed}: rc={done.returncode}", file=sys.stderr)
            if done.returncode:
                raise SystemExit(f"failed: see {target.parent / f'seed{seed}.log'}")


# --------------------------------------------------------------------------------- report
def summaries(out: Path, run: dict) -> list[dict] | None:
    paths = [run_dir(out, run, s) / "summary.json" for s in run["seeds"]]
    if not all(p.is_file() for p in paths):
        return None
    return [json.loads(p.read_text()) for p in paths]


def mib(rows: list[dict], key: str) -> str:
    values = [r.get(key) for r in rows]
    return "" if any(v is None for v in values) else f"{statistics.fmean(values):.3f}"


def rows_table(name: str, groups: dict) -> list[str]:
    lines = []
    for (method, label), rows in groups.items():
        if rows[0].get("accuracy") is None:
            continue
        acc = [r["accuracy"] for r in rows]
        lines.append(f"| {name} | {method} | {label} | {mib(rows, 'true_mb')} | "
                     f"{mib(rows, 'artifact_mb')} | {fmt(acc)} |")
    return lines


def paired_table(name: str, groups: dict, theirs: dict, key: str) -> list[str]:
    lines = []
    for (method, label), rows in groups.items():
        if method != "diffq" or any(r.get("accuracy") is None for r in rows):
            continue
        ours = [r["accuracy"] for r in rows]
        best = best_baseline(rows, theirs, key)
        if best is None:
            lines.append(f"| {name} | {label} | {mib(rows, key)} | {fmt(ours)} | none | | | |")
            continue
        (b_method, b_label), b_rows = best
        acc = [r["accuracy"] for r in b_rows]
        lines.append(f"| {name} | {label} | {mib(rows, key)} | {fmt(ours)} | {b_method} "
                     f"{b_label} | {mib(b_rows, key)} | {fmt(acc)} | "
                     f"**{fmt(paired(ours, acc), signed=True)}** |")
    return lines


def report(spec: dict) -> str:
    out, runs = spec["out"], spec["runs"]
    by_name = {r["name"]: r for r in runs}
    grouped, missing = {}, []
    for run in runs:
        docs = summaries(out, run)
        if docs is None:
            missing.append(run["name"])
        else:
            grouped[run["name"]] = group_rows(docs)
    lines = ["## Every row, mean ± sd over seeds", "",
             "| run | method | label | true MiB | file MiB | accuracy % |",
             "|---|---|---|---|---|---|"]
    for name, groups in grouped.items():
        lines += rows_table(name, groups)
    for key, what in (("true_mb", "true size"), ("artifact_mb", "file size")):
        lines += ["", f"## DiffQ against the best baseline at <= {SLACK}x its {what}", "",
                  f"| run | DiffQ | {what} MiB | accuracy % | best baseline | its MiB | its % | "
                  "DiffQ − it, paired |", "|---|---|---|---|---|---|---|---|"]
        for name, groups in grouped.items():
            other = by_name[name].get("compare_with")
            theirs = grouped.get(other, {}) if other else groups
            lines += paired_table(name, groups, theirs, key)
    if missing:
        lines += ["", f"Not finished (no summary.json for every seed): {', '.join(missing)}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(
        description="Run diffq finetune per seed (resumable) and report DiffQ against the best "
                    "baseline, paired by seed.")
    p.add_argument("spec", nargs="?", help="YAML or JSON spec (see the module docstring)")
    p.add_argument("--out", help="output directory (default: the spec's, or bench/out/sweep)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the spec's, or 0 1 2)")
    p.add_argument("--name", help="one run of this name, from the options below")
    p.add_argument("--recipe", help="recipe for every run")
    p.add_argument("--model", help="model for every run")
    p.add_argument("--target-mb", type=float, nargs="+", help="size targets for every run")
    p.add_argument("--baseline", choices=["none", "ptq", "qat", "lsq", "all"])
    p.add_argument("--weights", help="float model every seed starts from")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="recipe overrides added to every run")
    p.add_argument("--max-steps", type=int, help="cap on steps per stage (smoke tests)")
    p.add_argument("--report", action="store_true", help="run nothing; report what is there")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a = p.parse_args()
    try:
        spec = load_spec(a.spec, a)
    except (OSError, ValueError) as err:
        p.error(str(err))
    if not a.report:
        execute(spec, a.max_steps, a.dry_run)
    if a.dry_run:
        return
    text = report(spec)
    print(text)
    spec["out"].mkdir(parents=True, exist_ok=True)
    (spec["out"] / "report.md").write_text(text)


if __name__ == "__main__":
    main()
