"""Linear widths (``quant.param=linear optim.bits_travel=3``) against the paper's sigmoid,
DiffQ alone, same float model, steps and seeds, paired per seed: accuracy, true and file size,
and the share of weight groups whose width left its start.

Inputs:
  resnet18 / Fashion-MNIST   bench/out/fm60k/{minmax,min1}-b{2,3,4}-s*.json   (sigmoid:
                             bench/fm60k.sh, bench/minbits_fm.sh) against
                             lin-{minmax,learned}-b*-s*.json (bench/widths_fm.sh)
  resnet18 / digits          bench/out/widths/{sigmoid,linear}-s*/summary.json
                             (bench/widths_digits.sh: the default recipe at 6, 4 and 3 MiB)
  mobilenet_v2 / FM          bench/out/mbv2/{final,linear}-s*.json (bench/mobilenet_final.sh)

    python bench/widths_seeds.py      # prints the tables, writes bench/out/widths_seeds.md
"""

import json
import statistics
from pathlib import Path

OUT = Path("bench/out")
SEEDS = (0, 1, 2)


def diffq_fm(name: str, bits: int, seed: int) -> dict | None:
    path = OUT / "fm60k" / f"{name}-b{bits}-s{seed}.json"
    if not path.is_file():
        return None
    return next(r for r in json.loads(path.read_text())["rows"] if r["method"] == "diffq")


def diffq_mbv2(name: str, index: int, seed: int) -> dict | None:
    path = OUT / "mbv2" / f"{name}-s{seed}.json"
    if not path.is_file():
        return None
    return [r for r in json.loads(path.read_text())["rows"] if r["method"] == "diffq"][index]


def diffq_digits(name: str, index: int, seed: int) -> dict | None:
    path = OUT / "widths" / f"{name}-s{seed}" / "summary.json"
    return json.loads(path.read_text())["runs"][index] if path.is_file() else None


def _cell(runs: list[dict]) -> str:
    acc = [r["accuracy"] for r in runs]
    sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
    moved = [100 * r.get("moved_fraction", 0) for r in runs]
    file_mb = statistics.mean(r.get("artifact_mb", 0) for r in runs)
    return (f"{statistics.mean(acc):.2f} ± {sd:.2f} ({', '.join(f'{a:.2f}' for a in acc)}); "
            f"{statistics.mean(r['true_mb'] for r in runs):.3f} / {file_mb:.3f}; "
            f"{min(moved):.0f}-{max(moved):.0f} %")


def row(label: str, base: list, new: list) -> str | None:
    pairs = [(b, n) for b, n in zip(base, new, strict=True) if b and n]
    if not pairs:
        return None
    diffs = [n["accuracy"] - b["accuracy"] for b, n in pairs]
    paired = f"{', '.join(f'{d:+.2f}' for d in diffs)} (**{statistics.mean(diffs):+.2f}**)"
    return (f"| {label} | {_cell([b for b, _ in pairs])} | {_cell([n for _, n in pairs])} "
            f"| {paired} |")


def main() -> None:
    head = ("| size | sigmoid: accuracy % (per seed); true / file MiB; widths moved "
            "| linear, travel 3: same | linear − sigmoid, paired |\n|---|---|---|---|")
    lines = ["# resnet18 / Fashion-MNIST, 50 steps, 10,000 validation images\n", head]
    for grid, sig, lin in (("minmax", "minmax", "lin-minmax"), ("learned", "min1", "lin-learned")):
        for bits in (2, 3, 4):
            r = row(f"{bits} bits' ({grid})", [diffq_fm(sig, bits, s) for s in SEEDS],
                    [diffq_fm(lin, bits, s) for s in SEEDS])
            lines += [r] if r else []
    lines += ["\n# resnet18 / digits, the default recipe, 359 validation images\n", head]
    for index, target in enumerate((6, 4, 3)):
        r = row(f"{target} MiB", [diffq_digits("sigmoid", index, s) for s in SEEDS],
                [diffq_digits("linear", index, s) for s in SEEDS])
        lines += [r] if r else []
    lines += ["\n# mobilenet_v2 / Fashion-MNIST, 2 epochs on 6,000 images, 2,000 validation "
              "images\n", head]
    for index, bits in enumerate(("2.5", "3", "4")):
        r = row(f"{bits} bits'", [diffq_mbv2("final", index, s) for s in SEEDS],
                [diffq_mbv2("linear", index, s) for s in SEEDS])
        lines += [r] if r else []
    text = "\n".join(lines) + "\n"
    print(text)
    (OUT / "widths_seeds.md").write_text(text)


if __name__ == "__main__":
    main()
