"""DiffQ against the best of uniform QAT and LSQ (and PTQ where measured: resnet18) on three
model / data pairs, with the shipped recipe settings, 3 seeds, paired per seed; at equal true
size and at equal file size.

Inputs (``bench/tradeoff.py`` outputs, same float model, steps and seeds per pair):
  resnet18 / Fashion-MNIST   bench/out/fm60k/minmax-b{2,3,4}-s{0,1,2}.json   (bench/fm60k.sh)
  test_resnet / digits       bench/out/filedigits/final-s*.json (DiffQ, bench/digits_final.sh)
                             + true-s*.json (QAT, LSQ: bench/file_digits.sh)
  mobilenet_v2 / FM          bench/out/mbv2/final-s*.json (DiffQ, LSQ: bench/mobilenet_final.sh)
                             + fisher3-s*.json (QAT: bench/mobilenet_start.sh)
  and on the first pair: DiffQ with quant.grid=learned and its default 1-bit floor
  (fm60k/min1-b*-s*.json, bench/minbits_fm.sh) against QAT and LSQ on either grid
  (fm60k/{minmax,learned}-b*-s*.json); and every method fine-tuned at optim.lr=0.005
  (fm60k-lr005/, ``SET=optim.lr=0.005`` bench/grid_fm.sh), per grid and across grids; and
  DiffQ with the recipes' linear widths (fm60k/lin-{minmax,learned}-*, bench/widths_fm.sh;
  mbv2/linear-s*.json, bench/mobilenet_final.sh) against the same baselines; and every
  method on mobilenet_v2 with quant.grid=learned (mbv2/learned-s*.json, the same script); and
  every method on the first pair with 3x the steps (fm60k-long/, ``EPOCHS=3`` bench/grid_fm.sh,
  both grids).

    python bench/final_seeds.py       # prints the tables, writes bench/out/final_seeds.md
"""

import json
import statistics
from pathlib import Path

OUT = Path("bench/out")
SEEDS = (0, 1, 2)
SLACK = 1.02  # "at the same size or smaller", as the finetune verdict counts it


def rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def pick(rs, method, bits=None, index=None):
    """The row of ``method`` (at ``bits``, or the ``index``-th of that method)."""
    found = [r for r in rs if r["method"] == method and (bits is None or r.get("bits") == bits)]
    if index is not None:
        found = found[index:index + 1]
    return found[0] if found else None


def fm(seed, size, d="fm60k", grid="minmax", mine=None):  # size index 0..2 -> bits 2..4
    """``mine``: DiffQ from other runs (``{mine}-b*-s*.json``) against the same baselines."""
    b = size + 2
    rs = rows(OUT / f"{d}/{grid}-b{b}-s{seed}.json")
    ptq = rows(OUT / f"{d}/{grid}-b2-s0.json")  # PTQ does not depend on the seed
    ours = rows(OUT / f"{d}/{mine}-b{b}-s{seed}.json") if mine else rs
    return pick(ours, "diffq"), {**{m: {b: pick(rs, m, b)} for m in ("qat", "lsq")},
                               "ptq": {bits: pick(ptq, "ptq", bits) for bits in (2, 3, 4)}}


def fm_learned(seed, size, d="fm60k", mine="min1"):
    """DiffQ on the learned grid against QAT / LSQ on either grid (theirs: the better)."""
    b = size + 2
    ours = rows(OUT / f"{d}/{mine}-b{b}-s{seed}.json")
    theirs = {}
    for m in ("qat", "lsq"):
        for grid in ("minmax", "learned"):
            theirs[f"{m} {grid}"] = {
                bits: pick(rows(OUT / f"{d}/{grid}-b{bits}-s{seed}.json"), m, bits)
                for bits in (2, 3, 4)}
    return pick(ours, "diffq"), theirs


def digits(seed, size):
    mine, theirs = rows(OUT / f"filedigits/final-s{seed}.json"), rows(
        OUT / f"filedigits/true-s{seed}.json")
    return pick(mine, "diffq", index=size), {
        m: {b: pick(theirs, m, b) for b in (2, 3, 4)} for m in ("qat", "lsq")}


def mobilenet(seed, size, diffq="final"):
    mine, qat = rows(OUT / f"mbv2/final-s{seed}.json"), rows(OUT / f"mbv2/fisher3-s{seed}.json")
    ours = rows(OUT / f"mbv2/{diffq}-s{seed}.json")
    return pick(ours, "diffq", index=size), {
        "qat": {b: pick(qat, "qat", b) for b in (2, 3, 4)},
        "lsq": {b: pick(mine, "lsq", b) for b in (2, 3, 4)}}


def mobilenet_learned(seed, size):
    """Every method on the learned grid (bench/mobilenet_final.sh ``learned``); DiffQ against
    QAT / LSQ on either grid."""
    ours = rows(OUT / f"mbv2/learned-s{seed}.json")
    _, minmax = mobilenet(seed, size)
    theirs = {f"{m} minmax": minmax[m] for m in ("qat", "lsq")}
    for m in ("qat", "lsq"):
        theirs[f"{m} learned"] = {b: pick(ours, m, b) for b in (2, 3, 4)}
    return pick(ours, "diffq", index=size), theirs


PAIRS = {"resnet18 / Fashion-MNIST": fm, "test_resnet / digits": digits,
         "mobilenet_v2 / Fashion-MNIST": mobilenet,
         "resnet18 / Fashion-MNIST, grid=learned": fm_learned,
         "resnet18 / FM, lr 0.005": lambda s, i: fm(s, i, "fm60k-lr005"),
         "resnet18 / FM, lr 0.005, grid=learned": lambda s, i: fm_learned(
             s, i, "fm60k-lr005", "learned"),
         # The recipes' linear widths (bench/widths_fm.sh, the linear runs of
         # bench/mobilenet_final.sh) against the same baselines.
         "resnet18 / FM, linear widths": lambda s, i: fm(s, i, mine="lin-minmax"),
         "mobilenet_v2 / FM, linear widths": lambda s, i: mobilenet(s, i, "linear"),
         "resnet18 / FM, linear widths, grid=learned": lambda s, i: fm_learned(
             s, i, mine="lin-learned"),
         "mobilenet_v2 / FM, grid=learned": mobilenet_learned,
         # 150 steps instead of 50 for every method (EPOCHS=3 bench/grid_fm.sh).
         "resnet18 / FM, 3x steps": lambda s, i: fm(s, i, "fm60k-long"),
         "resnet18 / FM, 3x steps, grid=learned": lambda s, i: fm_learned(
             s, i, "fm60k-long", "learned")}
NAMES = {"qat": "uniform QAT", "lsq": "LSQ", "ptq": "PTQ"}


def mean(v):
    return statistics.mean(v) if v else float("nan")


def compare(fn, size: int, key: str):
    """(DiffQ accuracies per seed, its mean size, the best baseline's name, its accuracies,
    its mean size): the best (by mean accuracy) QAT / LSQ width whose size (``key``) is at
    most ``SLACK`` x DiffQ's, on every seed."""
    runs = [fn(s, size) for s in SEEDS]
    if any(d is None for d, _ in runs):
        return None
    ours = [d["accuracy"] for d, _ in runs]
    cap = mean([d[key] for d, _ in runs]) * SLACK
    best = None
    for method in runs[0][1]:
        for b in (2, 3, 4):
            theirs = [t[method].get(b) for _, t in runs]
            if any(r is None or r.get(key) is None for r in theirs):
                continue
            if mean([r[key] for r in theirs]) > cap:
                continue
            acc = [r["accuracy"] for r in theirs]
            if best is None or mean(acc) > mean(best[1]):
                kind, _, grid = method.partition(" ")
                best = (f"{NAMES[kind]} {b} bits{f' ({grid})' if grid else ''}", acc,
                        mean([r[key] for r in theirs]))
    return ours, mean([d[key] for d, _ in runs]), best


def table(key: str) -> list[str]:
    what = "true size" if key == "true_mb" else "file size"
    out = [f"| pair | DiffQ target | DiffQ % (per seed) | {what} MiB | best baseline at <= "
           f"{what} | its % (per seed) | its MiB | DiffQ - it, paired (mean) |",
           "|---|---|---|---|---|---|---|---|"]
    for name, fn in PAIRS.items():
        for size in range(3):
            got = compare(fn, size, key)
            if got is None:
                continue
            ours, mb, best = got
            target = fn(0, size)[0]["label"]
            if best is None:
                out.append(f"| {name} | {target} | {mean(ours):.2f} | {mb:.3f} | none | | | |")
                continue
            label, theirs, their_mb = best
            diff = [a - b for a, b in zip(ours, theirs, strict=True)]
            out.append(
                f"| {name} | {target} | {mean(ours):.2f} ({', '.join(f'{a:.2f}' for a in ours)})"
                f" | {mb:.3f} | {label} | {mean(theirs):.2f} "
                f"({', '.join(f'{a:.2f}' for a in theirs)}) | {their_mb:.3f} | "
                f"{', '.join(f'{d:+.2f}' for d in diff)} (**{mean(diff):+.2f}**) |")
    return out


def main() -> None:
    lines = ["## At equal true size", "", *table("true_mb"), "", "## At equal file size", "",
             *table("artifact_mb")]
    text = "\n".join(lines) + "\n"
    print(text)
    (OUT / "final_seeds.md").write_text(text)


if __name__ == "__main__":
    main()
