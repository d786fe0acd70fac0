"""Aggregates ``bench/noise_fm.sh``: ``DIR/{grid}-{noise}[-{param}]-b{bits}-s{seed}.json`` ->
DiffQ's accuracy per setting (mean ± sd over seeds) and each setting's paired difference from
the paper's (gaussian noise, sigmoid widths) on the same grid, printed as a Markdown table.

    python bench/noise_seeds.py [DIR]      # default bench/out/noisefm
"""

import glob
import json
import re
import statistics
import sys
from collections import defaultdict

D = sys.argv[1] if len(sys.argv) > 1 else "bench/out/noisefm"
acc = defaultdict(dict)  # (grid, noise, param, bits) -> seed -> (accuracy, true MiB)
for path in sorted(glob.glob(f"{D}/*-b*-s*.json")):
    m = re.match(r".*/(\w+)-(gaussian|uniform)(?:-(\w+))?-b(\d)-s(\d)\.json$", path)
    if not m:
        continue
    grid, noise, param, bits, seed = m.groups()
    (row,) = [r for r in json.load(open(path))["rows"] if r["method"] == "diffq"]
    acc[(grid, noise, param or "bits", int(bits))][int(seed)] = (row["accuracy"], row["true_mb"])


def ms(v):
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"


print("| grid | bits' size | noise | widths | accuracy % (per seed) | true MiB "
      "| − gaussian/sigmoid, paired | mean |")
print("|---|---|---|---|---|---|---|---|")
for key in sorted(acc, key=lambda k: (k[3], k[0] != "minmax", k[2] != "bits", k[1])):
    grid, noise, param, bits = key
    seeds = sorted(acc[key])
    a = [acc[key][s][0] for s in seeds]
    base = acc.get((grid, "gaussian", "bits", bits), {})
    diffs = [acc[key][s][0] - base[s][0] for s in seeds if s in base]
    same = (noise, param) == ("gaussian", "bits")
    paired = "" if same or not diffs else ", ".join(f"{d:+.2f}" for d in diffs)
    mean = "" if same or not diffs else f"{statistics.mean(diffs):+.2f}"
    mb = statistics.mean(acc[key][s][1] for s in seeds)
    print(f"| {grid} | {bits} | {noise} | {param} | {ms(a)} "
          f"({', '.join(f'{x:.2f}' for x in a)}) | {mb:.3f} | {paired} | {mean} |")
