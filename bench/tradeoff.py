"""Accuracy against true size on Fashion-MNIST + resnet18: DiffQ at size targets vs uniform QAT,
LSQ and post-training uniform quantization, every method with the same float model and epochs.

    python bench/tradeoff.py                                  # a few CPU minutes per run
    python bench/tradeoff.py --train-subset 60000 --val-subset 10000 --epochs 5

Each method is one ``diffq finetune --json`` call (through the CLI): the first trains the float
model (``train.float_epochs``) and saves it as ``float.pt``; every other call starts from that
file. Prints a markdown table, writes ``bench/out/tradeoff.json`` and the picture
(``--svg``, default ``docs/tradeoff.svg``).
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


def fashion_args(a) -> list[str]:
    return ["--recipe", "fashion-mnist-resnet18", "--data-dir", a.data_dir,
            f"data.train_subset={a.train_subset}", f"data.val_subset={a.val_subset}",
            "--epochs", str(a.epochs), f"--seed={a.seed}"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=FASHION)
    p.add_argument("--train-subset", type=int, default=4000)
    p.add_argument("--val-subset", type=int, default=2000)
    p.add_argument("--float-epochs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--targets", type=float, nargs="+", default=[6.0, 4.0, 3.0])
    p.add_argument("--qat-bits", type=int, nargs="+", default=[2, 3, 4, 8])
    p.add_argument("--lsq-bits", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--svg", default="docs/tradeoff.svg")
    p.add_argument("--out", default="bench/out/tradeoff.json")
    a = p.parse_args()
    common = fashion_args(a)
    work = Path(tempfile.mkdtemp(prefix="diffq-tradeoff-"))
    # DiffQ at each target, PTQ rows of the float model; trains and keeps the float model.
    first = finetune([*common, f"train.float_epochs={a.float_epochs}",
                      *(f"--target-mb={x:g}" for x in a.targets)], work / "diffq")
    weights = str(work / "diffq" / "float.pt")
    rows = list(first["table"])
    start = ["--weights", weights, "train.float_epochs=0", "--baseline", "none", "--mu", "0"]
    for method, widths in (("uniform", a.qat_bits), ("lsq", a.lsq_bits)):
        for bits in widths:
            run = finetune([*common, *start, f"quant.method={method}", f"quant.bits={bits}"],
                           work / f"{method}{bits}")["runs"][0]
            rows.append({"method": "qat" if method == "uniform" else "lsq",
                         "label": f"{bits} bits", "bits": bits, "accuracy": run["accuracy"],
                         "true_mb": run["true_mb"], "artifact_mb": run["artifact_mb"]})
    from diffq_cli.baselines import collapsed, mark_best
    from diffq_cli.plots import tradeoff_svg

    for row in rows:
        row["collapsed"] = collapsed(row["accuracy"], 10)
    mark_best(rows)
    title = (f"resnet18, Fashion-MNIST ({a.train_subset} train / {a.val_subset} val), "
             f"{a.epochs} epochs per method")
    Path(a.svg).parent.mkdir(parents=True, exist_ok=True)
    tradeoff_svg(a.svg, rows, title)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2))
    print(f"# {title}; float {first['float']['accuracy']:.2f} %\n")
    print("| method | run | true size MB | accuracy % | mean bits | final mu | note |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["true_mb"]):
        note = " ".join(t for t, on in (("best", r.get("best")),
                                        ("collapsed", r["collapsed"])) if on)
        bits = "—" if r.get("mean_bits") is None else f"{r['mean_bits']:.2f}"
        mu = "—" if r.get("mu") is None or r["method"] != "diffq" else f"{r['mu']:.3g}"
        print(f"| {r['method']} | {r['label']} | {r['true_mb']:.3f} | {r['accuracy']:.2f} | "
              f"{bits} | {mu} | {note} |")
    print(f"\npicture: {a.svg}; rows: {a.out}")


if __name__ == "__main__":
    main()
