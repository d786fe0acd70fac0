"""Mean and spread over seeds of several ``bench/tradeoff.py`` result files.

Rows are matched by method, run label and the DiffQ-only settings of their call
(``--diffq-set``), so a "before" call (``--diffq-set train.freeze_bits=0``) and the default one
stay apart. Prints a Markdown table: true size, artifact (entropy-coded file) size and accuracy,
mean ± sd, and each seed's accuracy.

    python bench/tradeoff_seeds.py bench/out/fm-s*.json bench/out/fm-before-s*.json
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict


def _key(row: dict, args: dict) -> tuple[str, str]:
    method = row["method"]
    if method == "diffq" and args.get("diffq_set"):
        method += " [" + " ".join(args["diffq_set"]) + "]"
    return method, row["label"]


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="tradeoff.py --out files")
    p.add_argument("--methods", nargs="*", default=None, help="only these methods (prefixes)")
    a = p.parse_args(argv)
    acc, true_mb, file_mb, seeds = (defaultdict(list) for _ in range(4))
    for path in a.files:
        with open(path) as f:
            data = json.load(f)
        seed = data["args"].get("seed")
        for row in data["rows"]:
            key = _key(row, data["args"])
            if a.methods and not any(key[0].startswith(m) for m in a.methods):
                continue
            if seed in seeds[key]:  # float and PTQ rows repeat in every call of one seed
                continue
            seeds[key].append(seed)
            acc[key].append(row["accuracy"])
            true_mb[key].append(row["true_mb"])
            if row.get("artifact_mb") is not None:
                file_mb[key].append(row["artifact_mb"])
    print("| method | run | seeds | true size MiB | file MiB | accuracy % (mean ± sd) | per seed |")
    print("|---|---|---|---|---|---|---|")
    for key in sorted(acc, key=lambda k: (-statistics.mean(true_mb[k]), k)):
        files = f"{statistics.mean(file_mb[key]):.3f}" if file_mb[key] else "–"
        per_seed = ", ".join(f"{x:.1f}" for x in acc[key])
        print(f"| {key[0]} | {key[1]} | {len(acc[key])} | {statistics.mean(true_mb[key]):.3f} | "
              f"{files} | {_mean_sd(acc[key])} | {per_seed} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
