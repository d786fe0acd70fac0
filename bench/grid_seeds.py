"""Aggregates the grid comparison of ``bench/grid_fm.sh``: ``DIR/{grid}-b{bits}-s{seed}.json``
(``bench/tradeoff.py`` outputs) -> mean ± sd per (method, grid, bits) and the paired difference
learned - minmax per seed, printed and written to ``DIR/grid_fm_results.md``.

    python bench/grid_seeds.py [DIR]      # default bench/out/gridfm
"""

import glob
import json
import re
import statistics
import sys
from collections import defaultdict

D = sys.argv[1] if len(sys.argv) > 1 else "bench/out/gridfm"
cell = defaultdict(dict)   # (method, grid, bits) -> seed -> row
floatacc = {}
for path in sorted(glob.glob(f"{D}/*-b*-s*.json")):
    g, b, s = re.match(r".*/(\w+)-b(\d)-s(\d)\.json", path).groups()
    b, s = int(b), int(s)
    data = json.load(open(path))
    floatacc[(g, b, s)] = data["float"]["accuracy"]
    for r in data["rows"]:
        m = r["method"]
        if m == "diffq":
            bits = b
        elif m in ("qat", "lsq", "ptq") and r.get("bits") in (2, 3, 4):
            bits = r["bits"]
            if m != "ptq" and bits != b:
                continue
        else:
            continue
        cell[(m, g, bits)].setdefault(s, r)   # PTQ repeats across calls: first kept

def ms(v):
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"

order = {"diffq": 0, "qat": 1, "lsq": 2, "ptq": 3}
grids = [g for g in ("minmax", "learned", "channel") if any(k[1] == g for k in cell)]
L = []
fl = sorted(set(floatacc.values()))
L.append(f"resnet18 / Fashion-MNIST (3200 train, 10000 val), 1 epoch (50 steps) per method, "
         f"one float model (float accuracy {', '.join(map(str, fl))} %). DiffQ 'bits' = target at "
         "that grid's true size of uniform b bits.\n")
L.append("| method | grid | bits / target | seeds | true MiB | file MiB | mean bits "
         "| acc % mean ± sd | per seed (s0, s1, s2) | collapsed |")
L.append("|---|---|---|---|---|---|---|---|---|---|")
for k in sorted(cell, key=lambda k: (k[2], order[k[0]], grids.index(k[1]))):
    rows = cell[k]
    seeds = sorted(rows)
    acc = [rows[s]["accuracy"] for s in seeds]
    tmb = statistics.mean(rows[s]["true_mb"] for s in seeds)
    fmb = [rows[s]["artifact_mb"] for s in seeds if rows[s].get("artifact_mb") is not None]
    mb = [rows[s].get("mean_bits") for s in seeds if rows[s].get("mean_bits") is not None]
    tgt = f"{k[2]} (target {rows[seeds[0]]['target_mb']:g})" if k[0] == "diffq" else str(k[2])
    col = sum(bool(rows[s].get("collapsed")) for s in seeds)
    fcell = f"{statistics.mean(fmb):.3f}" if fmb else "–"
    bcell = f"{statistics.mean(mb):.2f}" if mb else "–"
    per = ", ".join(f"s{s}={rows[s]['accuracy']:.2f}" for s in seeds)
    L.append(f"| {k[0]} | {k[1]} | {tgt} | {len(seeds)} | {tmb:.4f} | {fcell} | {bcell} | "
             f"{ms(acc)} | {per} | {col} |")
for other in grids[1:]:
    L.append(f"\nPaired difference {other} − minmax (same seed, same float model), "
             "accuracy points\n")
    L.append("| method | bits | per seed | mean ± sd | n |")
    L.append("|---|---|---|---|---|")
    for k in sorted(cell, key=lambda k: (k[2], order[k[0]])):
        if k[1] != "minmax" or (k[0], other, k[2]) not in cell:
            continue
        a, bb = cell[(k[0], other, k[2])], cell[k]
        seeds = sorted(set(a) & set(bb))
        d = [a[s]["accuracy"] - bb[s]["accuracy"] for s in seeds]
        if d:
            per = ", ".join(f"s{s}={x:+.2f}" for s, x in zip(seeds, d, strict=False))
            L.append(f"| {k[0]} | {k[2]} | {per} "
                     f"| {ms(d)} | {len(d)} |")
text = "\n".join(L) + "\n"
open(f"{D}/grid_fm_results.md", "w").write(text)
print(text)
