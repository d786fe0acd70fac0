"""Aggregates ``bench/epochs_digits.sh``: the default recipe with 3, 6 and 9 DiffQ epochs, every
method, seeds 0-2 (``bench/out/epochs/e{E}-s{S}/summary.json``). Per epochs and target: DiffQ's
accuracy per seed, true and file size, the share of widths that left their start; the best of
uniform QAT, LSQ and PTQ at <= 1.02x its size (as the finetune verdict counts it), paired per
seed, by true size and by file size; and each run's verdict sentence for the row.

    python bench/epochs_seeds.py     # prints the tables, writes bench/out/epochs_seeds.md
"""

import json
import statistics
from pathlib import Path

D = Path("bench/out/epochs")
SEEDS = (0, 1, 2)
SLACK = 1.02


def table(e: int) -> list[dict] | None:
    runs = [D / f"e{e}-s{s}/summary.json" for s in SEEDS]
    if not all(p.is_file() for p in runs):
        return None
    return [json.loads(p.read_text()) for p in runs]


def mean(v):
    return statistics.mean(v)


def best_baseline(runs, target: str, key: str):
    """The baseline row label with the best mean accuracy whose mean size (``key``) is at most
    SLACK x DiffQ's, and its accuracies per seed."""
    def row(d, method, label):
        return next(r for r in d["table"] if r["method"] == method and r["label"] == label)

    ours = [row(d, "diffq", target) for d in runs]
    cap = mean([r[key] for r in ours]) * SLACK
    best = None
    for r in runs[0]["table"]:
        if r["method"] not in ("qat", "lsq", "ptq") or r.get(key) is None:
            continue
        theirs = [row(d, r["method"], r["label"]) for d in runs]
        if mean([t[key] for t in theirs]) > cap:
            continue
        acc = [t["accuracy"] for t in theirs]
        if best is None or mean(acc) > mean(best[1]):
            best = (f"{r['method']} {r['label']}", acc, mean([t[key] for t in theirs]))
    return ours, best


def lines() -> list[str]:
    out = ["| DiffQ epochs | target | DiffQ % (per seed) | true / file MiB | widths moved | "
           "best at <= true size: DiffQ - it (per seed) | best at <= file size: DiffQ - it |",
           "|---|---|---|---|---|---|---|"]
    verdicts = []
    for e in (3, 6, 9):
        runs = table(e)
        if runs is None:
            continue
        for target in ("target=6MiB", "target=4MiB", "target=3MiB"):
            cells = []
            for key in ("true_mb", "artifact_mb"):
                ours, best = best_baseline(runs, target, key)
                acc = [r["accuracy"] for r in ours]
                if best is None:
                    cells.append("none")
                    continue
                label, theirs, _ = best
                diff = [a - b for a, b in zip(acc, theirs, strict=True)]
                cells.append(f"{label} {mean(theirs):.2f}: **{mean(diff):+.2f}** "
                             f"({', '.join(f'{x:+.2f}' for x in diff)})")
            moved = [100 * r["moved_fraction"] for r in ours]
            out.append(
                f"| {e} | {target} | {mean(acc):.2f} ({', '.join(f'{a:.2f}' for a in acc)}) | "
                f"{mean([r['true_mb'] for r in ours]):.3f} / "
                f"{mean([r['artifact_mb'] for r in ours]):.3f} | "
                f"{min(moved):.0f}-{max(moved):.0f} % | {cells[0]} | {cells[1]} |")
        for s, d in zip(SEEDS, runs, strict=True):
            verdicts += [f"- {e} epochs, seed {s}: {v}" for v in d["verdicts"]]
    return out + ["", "Verdicts printed by the runs:", "", *verdicts]


def main() -> None:
    text = "\n".join(lines()) + "\n"
    print(text)
    Path("bench/out/epochs_seeds.md").write_text(text)


if __name__ == "__main__":
    main()
