"""Aggregates ``bench/file_fm.sh``: DiffQ aimed at the file against DiffQ aimed at the true
size, uniform QAT and LSQ, at the file sizes of QAT's 2/3/4-bit artifacts (resnet18 /
Fashion-MNIST, 3 seeds), and how close the file-size estimates came to the written files.
Printed and written to ``DIR/file_fm_results.md``.

    python bench/file_seeds.py [DIR] [GRID_DIR]   # defaults bench/out/filefm, bench/out/gridfm

QAT and LSQ rows come from the grid comparison's ``minmax`` runs (``GRID_DIR``, same float
model, same steps, same seeds), which ``bench/grid_fm.sh`` writes.
"""

import glob
import json
import re
import statistics
import sys
from collections import defaultdict

D = sys.argv[1] if len(sys.argv) > 1 else "bench/out/filefm"
G = sys.argv[2] if len(sys.argv) > 2 else "bench/out/gridfm"
cells = defaultdict(dict)  # (method, bits) -> seed -> row
estimates = []  # rows with a written file and its estimates
# One call per (kind, bits, seed): {kind}-b{b}-s{s}.json (bench/file_fm.sh); or one call per
# (kind, seed) with DiffQ at the 2/3/4-bit targets in that order: {kind}-s{s}.json
# (bench/file_digits.sh), whose "true" calls also hold QAT and LSQ at 2/3/4 bits.
for path in sorted(glob.glob(f"{D}/*-s*.json")):
    m = re.match(r".*/(\w+?)(?:-b(\d))?-s(\d)\.json", path)
    kind, one, s = m.group(1), m.group(2), int(m.group(3))
    rows = json.load(open(path))["rows"]
    diffq = [r for r in rows if r["method"] == "diffq"]
    bits = [int(one)] if one else [2, 3, 4]
    for b, r in zip(bits, sorted(diffq, key=lambda r: r["target_mb"]), strict=True):
        cells[(f"diffq-{kind}", b)][s] = r
    for r in rows:
        if r.get("artifact_mb") and r.get("file_estimate_mb"):
            estimates.append((r["method"], r["label"], s, r))
        if not one and r["method"] in ("qat", "lsq"):
            cells[(r["method"], r["bits"])][s] = r
for path in sorted(glob.glob(f"{G}/minmax-b*-s*.json")):
    b, s = (int(x) for x in re.match(r".*/minmax-b(\d)-s(\d)\.json", path).groups())
    for r in json.load(open(path))["rows"]:
        if r["method"] in ("qat", "lsq") and r.get("bits") == b:
            cells[(r["method"], b)][s] = r


def ms(v):
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"


NAMES = {"diffq-file": "DiffQ, --size file", "diffq-true": "DiffQ, true-size target",
         "qat": "uniform QAT", "lsq": "LSQ"}
L = [f"{D}: one float model, same steps per method, seeds 0-2. File target = the file size of "
     "QAT's b-bit artifact (at least DiffQ's floor); true target = the true size of uniform b "
     "bits.\n",
     "| b | method | target MiB | file MiB | true MiB | mean bits | accuracy % (mean ± sd) "
     "| per seed | file − true-aimed, paired |", "|---|---|---|---|---|---|---|---|---|"]
for b in (2, 3, 4):
    for m in ("diffq-file", "diffq-true", "qat", "lsq"):
        rows = cells.get((m, b), {})
        if not rows:
            continue
        seeds = sorted(rows)
        acc = [rows[s]["accuracy"] for s in seeds]
        fmb = statistics.mean(rows[s]["artifact_mb"] for s in seeds)
        tmb = statistics.mean(rows[s]["true_mb"] for s in seeds)
        bits = statistics.mean(rows[s].get("mean_bits") or b for s in seeds)
        tgt = rows[seeds[0]].get("target_mb")
        paired = ""
        other = cells.get(("diffq-true", b), {})
        if m == "diffq-file" and other:
            d = [rows[s]["accuracy"] - other[s]["accuracy"] for s in seeds if s in other]
            paired = ", ".join(f"{x:+.2f}" for x in d) + f" (mean {statistics.mean(d):+.2f})"
        per = ", ".join(f"{rows[s]['accuracy']:.2f}" for s in seeds)
        L.append(f"| {b} | {NAMES[m]} | {tgt if tgt else '–'} | {fmb:.3f} | {tmb:.3f} | "
                 f"{bits:.2f} | {ms(acc)} | {per} | {paired} |")
L += ["", "Estimated against written file (MiB): `file_estimate_mb` counts the order-0 code length "
      "of the levels (`quant/coded.py`), `file_table_mb` is the differentiable estimate "
      "(per-tensor tables, DiffQ only).\n",
      "| method | run | seed | mean bits | file | from levels | ratio | differentiable | ratio |",
      "|---|---|---|---|---|---|---|---|---|"]
for method, label, s, r in estimates:
    f, e, t = r["artifact_mb"], r["file_estimate_mb"], r.get("file_table_mb")
    tcell = f"{t:.4f} | {t / f:.4f}" if t else "– | –"
    L.append(f"| {method} | {label} | {s} | {r.get('mean_bits') or 0:.2f} | {f:.4f} | {e:.4f} | "
             f"{e / f:.4f} | {tcell} |")
text = "\n".join(L)
print(text)
open(f"{D}/file_fm_results.md", "w").write(text + "\n")
