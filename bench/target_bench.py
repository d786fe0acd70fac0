"""Acceptance of ``--target-mb``: does the run land in [0.9 X, X], and does aiming beat guessing mu?

    python bench/target_bench.py                    # both parts
    python bench/target_bench.py --only default     # default recipe, targets 6, 4, 3 MB

1. Default recipe (digits, offline): targets 6, 4 and 3 MB in one call; each true size must be in
   [0.9 X, X].
2. Fashion-MNIST (Debian files, a train subset): target 3 MB against a ``--mu`` sweep with the same
   float model and epochs; the target run must be <= 3 MB at an accuracy no worse than the best
   sweep point at <= 3 MB.

Prints markdown tables and writes ``bench/out/target_bench.json``.
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


def default_part(work: Path) -> dict:
    summary = finetune(["--target-mb", "6", "--target-mb", "4", "--target-mb", "3"],
                       work / "default")
    print("## default recipe (resnet18, digits): targets\n")
    print("| target MB | true MB | in [0.9X, X] | artifact bytes | mean bits | final mu | acc % |")
    print("|---|---|---|---|---|---|---|")
    ok = True
    for r in summary["runs"]:
        x = r["target_mb"]
        inside = 0.9 * x <= r["true_mb"] <= x
        ok &= inside
        print(f"| {x:g} | {r['true_mb']:.3f} | {'yes' if inside else 'NO'} | "
              f"{r['artifact_bytes']:,} | {r['mean_bits']:.2f} | {r['mu']:.3g} | "
              f"{r['accuracy']:.2f} |")
    print(f"\nfloat: {summary['float']['accuracy']:.2f} %, {summary['float']['mb']:.2f} MB; "
          f"all inside: {ok}\n")
    return {"runs": summary["runs"], "float": summary["float"], "ok": ok}


def fashion_part(work: Path, a) -> dict:
    common = ["--recipe", "fashion-mnist-resnet18", "--data-dir", a.data_dir,
              f"data.train_subset={a.train_subset}", f"data.val_subset={a.val_subset}",
              "--epochs", str(a.epochs), "--baseline", "none"]
    aimed = finetune([*common, f"train.float_epochs={a.float_epochs}", "--target-mb", "3"],
                     work / "target")
    weights = str(work / "target" / "float.pt")
    sweep = finetune([*common, "--weights", weights, "train.float_epochs=0",
                      *(f"--mu={mu:g}" for mu in a.mu)], work / "sweep")
    target = aimed["runs"][0]
    fitting = [r for r in sweep["runs"] if r["true_mb"] <= 3.0]
    best = max(fitting, key=lambda r: r["accuracy"]) if fitting else None
    print(f"## Fashion-MNIST ({a.train_subset} train / {a.val_subset} val, "
          f"{a.float_epochs} float + {a.epochs} epochs): target 3 MB vs a mu sweep\n")
    print("| run | true MB | acc % | mean bits | final mu |")
    print("|---|---|---|---|---|")
    print(f"| --target-mb 3 | {target['true_mb']:.3f} | {target['accuracy']:.2f} | "
          f"{target['mean_bits']:.2f} | {target['mu']:.3g} |")
    for r in sweep["runs"]:
        print(f"| --mu {r['mu']:g} | {r['true_mb']:.3f} | {r['accuracy']:.2f} | "
              f"{r['mean_bits']:.2f} | {r['mu']:.3g} |")
    ok = target["true_mb"] <= 3.0 and (best is None or target["accuracy"] >= best["accuracy"])
    where = "none of the sweep fits 3 MB" if best is None else (
        f"best sweep point <= 3 MB: mu {best['mu']:g}, {best['accuracy']:.2f} %")
    print(f"\nfloat {aimed['float']['accuracy']:.2f} %; {where}; target no worse: {ok}\n")
    return {"target": target, "sweep": sweep["runs"], "float": aimed["float"], "ok": ok}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["default", "fashion"])
    p.add_argument("--data-dir", default=FASHION)
    p.add_argument("--train-subset", type=int, default=4000)
    p.add_argument("--val-subset", type=int, default=2000)
    p.add_argument("--float-epochs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--mu", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    p.add_argument("--out", default="bench/out/target_bench.json")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="diffq-target-"))
    result = {}
    if a.only in (None, "default"):
        result["default"] = default_part(work)
    if a.only in (None, "fashion"):
        result["fashion"] = fashion_part(work, a)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
