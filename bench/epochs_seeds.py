"""Aggregates ``bench/epochs_digits.sh``: the default recipe with 3, 6 and 9 DiffQ epochs, every
method, seeds 0-2 (``bench/out/epochs/e{E}-s{S}/summary.json``). Per epochs and target: DiffQ's
accuracy per seed, true and file size, the share of widths that left their start; the best of
uniform QAT, LSQ and PTQ at <= 1.02x its size (``final_seeds.compare``, as the finetune verdict
counts it), paired per seed, by true size and by file size; and each run's verdict sentence.

    python bench/epochs_seeds.py     # prints the tables, writes bench/out/epochs_seeds.md
"""

import json
from pathlib import Path

from final_seeds import SEEDS, compare, mean

D = Path("bench/out/epochs")
TARGETS = ("target=6MiB", "target=4MiB", "target=3MiB")


def summary(e: int, seed: int) -> dict | None:
    path = D / f"e{e}-s{seed}/summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def pair(e: int):
    """``final_seeds``' pair function for E epochs: (DiffQ's row at target index ``i``, the
    baselines' rows per method and bits)."""
    def fn(seed, i):
        table = summary(e, seed)["table"]
        ours = next(r for r in table if r["method"] == "diffq" and r["label"] == TARGETS[i])
        return ours, {m: {r["bits"]: r for r in table if r["method"] == m}
                      for m in ("qat", "lsq", "ptq")}
    return fn


def cell(got) -> str:
    ours, _, best = got
    if best is None:
        return "none"
    label, theirs, _ = best
    diff = [a - b for a, b in zip(ours, theirs, strict=True)]
    return (f"{label} {mean(theirs):.2f}: **{mean(diff):+.2f}** "
            f"({', '.join(f'{x:+.2f}' for x in diff)})")


def lines() -> list[str]:
    out = ["| DiffQ epochs | target | DiffQ % (per seed) | true / file MiB | widths moved | "
           "best at <= true size: DiffQ - it (per seed) | best at <= file size: DiffQ - it |",
           "|---|---|---|---|---|---|---|"]
    verdicts = []
    for e in (3, 6, 9):
        if any(summary(e, s) is None for s in SEEDS):
            continue
        fn = pair(e)
        for i, target in enumerate(TARGETS):
            rows = [fn(s, i)[0] for s in SEEDS]
            acc = [r["accuracy"] for r in rows]
            moved = [100 * r["moved_fraction"] for r in rows]
            out.append(
                f"| {e} | {target} | {mean(acc):.2f} ({', '.join(f'{a:.2f}' for a in acc)}) | "
                f"{mean([r['true_mb'] for r in rows]):.3f} / "
                f"{mean([r['artifact_mb'] for r in rows]):.3f} | "
                f"{min(moved):.0f}-{max(moved):.0f} % | {cell(compare(fn, i, 'true_mb'))} | "
                f"{cell(compare(fn, i, 'artifact_mb'))} |")
        verdicts += [f"- {e} epochs, seed {s}: {v}" for s in SEEDS
                     for v in summary(e, s)["verdicts"]]
    return out + ["", "Verdicts printed by the runs:", "", *verdicts]


def main() -> None:
    text = "\n".join(lines()) + "\n"
    print(text)
    Path("bench/out/epochs_seeds.md").write_text(text)


if __name__ == "__main__":
    main()
