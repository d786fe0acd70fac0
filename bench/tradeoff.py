"""Accuracy against true size: DiffQ at size targets vs uniform QAT, LSQ and post-training
uniform quantization (PTQ), every method starting from the same float model with the same
fine-tuning epochs.

    python bench/tradeoff.py                      # resnet18 + Fashion-MNIST, ~25 min on 2 CPUs
    python bench/tradeoff.py --train-subset 60000 --val-subset 10000 --epochs 5
    python bench/tradeoff.py --recipe default --model resnet18 --data-dir "" \\
        --targets 3 4 --svg docs/tradeoff-digits.svg   # digits, offline
    python bench/tradeoff.py --diffq-only --targets 4 quant.group_size=16   # one variant

Each method is one ``diffq finetune --json`` call (through the CLI): the first trains the float
model (``train.float_epochs``) and saves it as ``float.pt``; every other call starts from that
file. Extra ``key=value`` arguments go to every call (recipe overrides); ``--diffq-set`` ones to
the DiffQ call only. Prints a markdown table, writes the rows to ``--out`` after every run and
the picture to ``--svg``.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

FASHION = "/usr/share/datasets/fashion-mnist"


def finetune(args: list[str], out: Path) -> dict:
    """One ``diffq finetune --json`` run; its summary."""
    cmd = [sys.executable, "-m", "diffq_cli", "finetune", *args, "--output", str(out),
           "--overwrite", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def common_args(a) -> list[str]:
    """The arguments every call shares: recipe, data, subsets, epochs, seed, overrides."""
    args = ["--recipe", a.recipe, f"--epochs={a.epochs}", f"--seed={a.seed}"]
    if a.model:
        args += ["--model", a.model]
    if a.data_dir:
        args += ["--data-dir", a.data_dir]
    for key in ("train_subset", "val_subset", "input_size", "batch_size"):
        value = getattr(a, key)
        if value is not None:
            args.append(f"data.{key}={value}")
    return args + list(a.overrides)


def print_table(rows: list[dict], title: str, float_acc: float) -> None:
    print(f"# {title}; float {float_acc:.2f} %\n")
    print("| method | run | true size MiB | accuracy % | mean bits | final mu | note |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (-r["true_mb"], r["method"])):
        note = " ".join(t for t, on in (("best", r.get("best")),
                                        ("collapsed", r.get("collapsed"))) if on)
        bits = "—" if r.get("mean_bits") is None else f"{r['mean_bits']:.2f}"
        mu = "—" if r.get("mu") is None or r["method"] != "diffq" else f"{r['mu']:.3g}"
        print(f"| {r['method']} | {r['label']} | {r['true_mb']:.3f} | {r['accuracy']:.2f} | "
              f"{bits} | {mu} | {note} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="recipe key=value overrides for every call")
    p.add_argument("--recipe", default="fashion-mnist-resnet18")
    p.add_argument("--model", default=None, help="model name (default: the recipe's)")
    p.add_argument("--data-dir", default=FASHION, help="'' for a dataset that needs none")
    p.add_argument("--train-subset", type=int, default=3200)
    p.add_argument("--val-subset", type=int, default=1000)
    p.add_argument("--input-size", type=int, default=28)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--float-epochs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None, help="start from this float.pt")
    # resnet18: 2.70 MB floor; uniform 3 bits 4.03 MB, 4 bits 5.36 MB: DiffQ at equal sizes.
    p.add_argument("--targets", type=float, nargs="+", default=[3.0, 4.03, 5.36])
    p.add_argument("--diffq-set", nargs="*", default=[], help="key=value for the DiffQ call only")
    p.add_argument("--qat-bits", type=int, nargs="*", default=[2, 3, 4, 8])
    p.add_argument("--lsq-bits", type=int, nargs="*", default=[2, 3, 4])
    p.add_argument("--diffq-only", action="store_true", help="no QAT/LSQ runs")
    p.add_argument("--svg", default="docs/tradeoff.svg", help="'' for no picture")
    p.add_argument("--out", default="bench/out/tradeoff.json")
    p.add_argument("--title", default=None)
    p.add_argument("--grid", default=None, help="quant.grid for every method (default: recipe's)")
    a = p.parse_args()
    if a.grid:
        a.overrides = [*a.overrides, f"quant.grid={a.grid}"]
    common = common_args(a)
    work = Path(tempfile.mkdtemp(prefix="diffq-tradeoff-"))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from diffq_cli.run.baselines import collapsed, mark_beaten, mark_best, verdicts

    def save(rows, first):
        out.write_text(json.dumps({"args": vars(a), "float": first["float"], "rows": rows},
                                  indent=2))

    # DiffQ at each target plus the PTQ rows; trains the float model unless --weights.
    start = (["--weights", a.weights, "train.float_epochs=0"] if a.weights
             else [f"train.float_epochs={a.float_epochs}"])
    first = finetune([*common, *start, *a.diffq_set, *(f"--target-mb={x:g}" for x in a.targets)],
                     work / "diffq")
    weights = a.weights or str(work / "diffq" / "float.pt")
    rows = list(first["table"])
    save(rows, first)
    plain = ["--weights", weights, "train.float_epochs=0", "--baseline", "none", "--mu", "0"]
    runs = [] if a.diffq_only else [("uniform", b) for b in a.qat_bits] + [
        ("lsq", b) for b in a.lsq_bits]
    for method, bits in runs:
        run = finetune([*common, *plain, f"quant.method={method}", f"quant.bits={bits}"],
                       work / f"{method}{bits}")["runs"][0]
        rows.append({"method": "qat" if method == "uniform" else "lsq",
                     "label": f"{bits} bits", "bits": bits, "accuracy": run["accuracy"],
                     "true_mb": run["true_mb"], "artifact_mb": run["artifact_mb"],
                     "file_estimate_mb": run.get("file_estimate_mb"), "mean_bits": float(bits)})
        save(rows, first)
    classes = first["runs"][0].get("num_classes", 10) if first["runs"] else 10
    for row in rows:
        row["collapsed"] = collapsed(row["accuracy"], classes)
    mark_best(rows)
    mark_beaten(rows)
    save(rows, first)
    title = a.title or (
        f"{first['model']}, {first['dataset']} ({a.train_subset} train / {a.val_subset} val), "
        f"{a.epochs} epoch(s) per method, seed {a.seed}")
    if a.svg:
        from diffq_cli.files.plots import tradeoff_svg

        Path(a.svg).parent.mkdir(parents=True, exist_ok=True)
        tradeoff_svg(a.svg, rows, title)
    print_table(rows, title, first["float"]["accuracy"])
    print("\n".join(["", *verdicts(rows)]))
    print(f"\npicture: {a.svg or '-'}; rows: {a.out}; float weights: {weights}")


if __name__ == "__main__":
    main()
