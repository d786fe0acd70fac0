"""Evidence for the default noise source: pooled noise vs fresh noise, same runs otherwise.

Runs ``diffq finetune`` (through the CLI, ``--json``) for each dataset, mu and noise source, and
prints accuracy and true size side by side. Writes ``bench/out/noise_evidence.json``.

    python bench/noise_evidence.py                 # digits + Fashion-MNIST (Debian files)
    python bench/noise_evidence.py --only digits

Every run sets ``train.freeze_bits=0`` (the short-run recipes train their last quarter without
noise, which would dilute the comparison).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

FASHION = "/usr/share/datasets/fashion-mnist"
SETUPS = {
    "digits": ["--recipe", "default", "train.freeze_bits=0"],
    "fashion-mnist": [
        "--recipe",
        "fashion-mnist-resnet18",
        "train.freeze_bits=0",
        "data.train_subset=12000",
        "data.val_subset=2000",
        "train.float_epochs=2",
        "--epochs",
        "2",
    ],
}


def run(args, out):
    cmd = [sys.executable, "-m", "diffq_cli", "finetune", *args, "--output", str(out), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SETUPS))
    parser.add_argument("--mu", type=float, nargs="+", default=[1e-3, 1.0])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, setup in SETUPS.items():
            if args.only and name != args.only:
                continue
            if name == "fashion-mnist" and not Path(FASHION).is_dir():
                print(f"skip {name}: apt-get install dataset-fashion-mnist")
                continue
            for source in ("pool", "fresh"):
                mus = [x for mu in args.mu for x in ("--mu", str(mu))]
                summary = run(
                    [*setup, *mus, f"quant.noise_source={source}"], Path(tmp) / f"{name}-{source}"
                )
                for r in summary["runs"]:
                    rows.append(
                        {
                            "dataset": name,
                            "noise": source,
                            "mu": r["mu"],
                            "float_acc": r["float_accuracy"],
                            "acc": r["accuracy"],
                            "true_mb": r["true_mb"],
                            "mean_bits": r["mean_bits"],
                        }
                    )
                    print(
                        f"{name:14s} {source:5s} mu={r['mu']:<6g} float {r['float_accuracy']:6.2f}%"
                        f"  quantized {r['accuracy']:6.2f}%  true {r['true_mb']:7.3f} MB"
                        f"  mean bits {r['mean_bits']:.2f}",
                        flush=True,
                    )
    name = f"noise_evidence-{args.only}.json" if args.only else "noise_evidence.json"
    out = Path(__file__).parent / "out" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
