"""Baselines at equal size: uniform post-training quantization (PTQ), uniform QAT and LSQ.

PTQ quantizes the starting model with min/max per tensor at 8/6/4/3/2 bits, with the recipe's
``min_size``/``exclude``/``float16``: no training, one evaluation each. The trained baselines
(``UniformQuantizer(qat=True)``, ``LSQ``) train at the integer width whose uniform size is
nearest a DiffQ result, with the same epochs, schedule and grid, so the table compares at equal
size and equal budget.
"""

import dataclasses
import statistics

PTQ_BITS = (8, 6, 4, 3, 2)
COLLAPSE = 1.5  # an accuracy below 1.5x chance (15 % with 10 classes) is reported as collapsed


def collapsed(accuracy: float | None, num_classes: int) -> bool:
    """Whether ``accuracy`` (percent) is at chance level for ``num_classes`` classes."""
    return accuracy is not None and accuracy < COLLAPSE * 100.0 / max(num_classes, 1)


def _uniform(model, q, bits: int, qat: bool = False):
    from diffq_cli.quant import UniformQuantizer

    return UniformQuantizer(model, bits=bits, qat=qat, min_size=q.min_size, float16=q.float16,
                            exclude=list(q.exclude), grid=q.grid)


def uniform_size(model, q, bits: int, file: bool = False) -> float:
    """True size in MB of ``model`` under uniform ``bits``-bit quantization (with ``file``:
    the estimated size of its entropy-coded file)."""
    quantizer = _uniform(model, q, bits)
    try:
        return quantizer.file_model_size() if file else quantizer.true_model_size()
    finally:
        quantizer.detach()


def ptq_rows(model, q, accuracy, bits=PTQ_BITS, calibrate=None, file_mb=None) -> list[dict]:
    """Post-training uniform quantization of ``model`` (left unchanged) at each width.

    Args:
        model: the starting float model.
        q: the recipe's ``quant`` section (min_size, float16, exclude, grid).
        accuracy: ``accuracy(model) -> percent`` on the validation set.
        bits: widths to measure.
        calibrate: optional ``calibrate(model)`` run on the quantized model before it is
            evaluated (``train.bn_recalibrate``: BatchNorm statistics of the quantized weights;
            a clipped grid shifts each channel's mean, which the float statistics do not know).
            The model's buffers are restored afterwards.
        file_mb: optional ``file_mb(quantizer) -> MiB``, the size its artifact would have
            (``artifact_mb`` of each row; compared by ``--size file``).
    """
    rows = []
    saved = {k: b.detach().clone() for k, b in model.named_buffers()} if calibrate else {}
    for width in bits:
        quantizer = _uniform(model, q, width)
        try:
            if calibrate is not None:
                calibrate(model)
            model.eval()  # eval forwards see the truly quantized weights
            rows.append({"method": "ptq", "label": f"{width} bits", "bits": width,
                         "accuracy": accuracy(model), "true_mb": quantizer.true_model_size(),
                         "mean_bits": float(width) if quantizer.quantized else None})
            if file_mb is not None:
                rows[-1]["artifact_mb"] = file_mb(quantizer)
        finally:
            quantizer.detach()
            for key, b in model.named_buffers():
                if key in saved:
                    b.data.copy_(saved[key])
    return rows


def bn_calibration(num_batches: int, loader):
    """``calibrate`` for ``ptq_rows`` from ``train.bn_recalibrate`` (None when it is 0)."""
    if not num_batches:
        return None
    from diffq_cli.quant.calibrate import recalibrate_batchnorm

    return lambda model: recalibrate_batchnorm(model, loader, num_batches)


def uniform_sizes(model, q, file: bool = False, max_bits: int = 8) -> dict[int, float]:
    """``{bits: uniform_size(model, q, bits, file)}`` from 1 bit to ``max_bits``: measured
    once, it serves every trained baseline's ``baseline_widths``."""
    return {bits: uniform_size(model, q, bits, file) for bits in range(1, max_bits + 1)}


def baseline_widths(table: dict[int, float], sizes: list[float], min_bits: int = 1
                    ) -> list[int]:
    """For each DiffQ size, the width of ``table`` (``uniform_sizes``: true or file sizes) from
    ``min_bits`` up whose size is nearest, each width once. LSQ needs ``min_bits=2`` (its
    signed grid; on ``learned`` 1-bit uniform quantization is +-alpha/2)."""
    table = {bits: size for bits, size in table.items() if bits >= min_bits}
    out = []
    for size in sizes:
        width = min(table, key=lambda b: (abs(table[b] - size), b))
        if width not in out:
            out.append(width)
    return out


# train.baseline -> the trained baselines it adds (each also gets the PTQ rows), by row method.
_QUANT_METHOD = {"qat": "uniform", "lsq": "lsq"}


def baseline_recipe(recipe, method: str, bits: int):
    """``recipe`` training the baseline ``method`` (``qat`` or ``lsq``) at ``bits``, the rest
    (grid, epochs, schedule) unchanged."""
    quant = dataclasses.replace(recipe.quant, method=_QUANT_METHOD[method], bits=float(bits))
    train = dataclasses.replace(recipe.train, target_mb=(), mu=(0.0,))
    return dataclasses.replace(recipe, quant=quant, train=train)


def _measured(row: dict, key: str) -> bool:
    return row.get(key) is not None and row.get("accuracy") is not None


def _better_within(row: dict, candidates: list[dict], slack: float, key: str) -> list[dict]:
    """The measured ``candidates`` (other than ``row``) at most ``slack`` larger than ``row``
    (by ``key``: ``true_mb``, or ``artifact_mb`` for the file) and more accurate."""
    return [other for other in candidates
            if other is not row and _measured(other, key)
            and other[key] <= row[key] * (1 + slack)
            and other["accuracy"] > row["accuracy"]]


def mark_best(rows: list[dict], tolerance: float = 0.02, key: str = "true_mb") -> None:
    """Sets ``row["best"]``: no other row at the same or a smaller size is more accurate.

    "The same size" allows ``tolerance`` (2 %): a row 1 % larger but more accurate still beats
    it. The marked rows are the Pareto front of accuracy against true size (``key``: the size
    compared, ``artifact_mb`` for the file); a collapsed row (chance level) is never marked,
    even when nothing is smaller.
    """
    for row in rows:
        row["best"] = (_measured(row, key) and not row.get("collapsed")
                       and not _better_within(row, rows, tolerance, key))


BASELINES = ("ptq", "qat", "lsq")
_NAMES = {"ptq": "post-training uniform quantization", "qat": "uniform QAT", "lsq": "LSQ"}


def _smallest_better_baseline(row: dict, rows: list[dict], slack: float, key: str):
    """The smallest (then most accurate) baseline row at most ``slack`` larger than ``row``
    and more accurate; rows of collapsed runs never count."""
    baselines = [r for r in rows if r.get("method") in BASELINES and not r.get("collapsed")]
    better = _better_within(row, baselines, slack, key) if _measured(row, key) else []
    return min(better, key=lambda o: (o[key], -o["accuracy"]), default=None)


def mark_beaten(rows: list[dict], tolerance: float = 0.02, key: str = "true_mb") -> None:
    """Sets ``row["beaten_by"]`` on every DiffQ row: the baseline row at the same or a smaller
    size (``tolerance`` as in ``mark_best``) that is more accurate, the smallest such one (then
    the most accurate), or None when no baseline beats it. Rows of collapsed runs never beat
    anything."""
    for row in rows:
        if row.get("method") == "diffq":
            best = _smallest_better_baseline(row, rows, tolerance, key)
            row["beaten_by"] = None if best is None else f"{best['method']} {best['label']}"


def _where(row: dict) -> str:
    """Where a baseline's artifact is (trained baselines save one), for the verdict."""
    return f": {row['artifact']}" if row.get("artifact") else ""


NEARLY = 0.10  # the verdict names a more accurate baseline at most 10 % larger


def verdicts(rows: list[dict], key: str = "true_mb") -> list[str]:
    """One plain sentence per DiffQ row (after ``mark_beaten``): which baseline beats it, or
    that none at its size does (and which more accurate one is at most 10 % larger); and a
    hint when no trained baseline (uniform QAT, LSQ) was run to compare. ``key``: the size
    compared (``artifact_mb``: the file, named so in the sentences)."""
    from diffq_cli.units import human

    def size(r: dict) -> str:
        return ("file " if key == "artifact_mb" else "") + human(r[key], "mib")

    by_name = {f"{r['method']} {r['label']}": r for r in rows}
    lines = []
    for row in rows:
        if row.get("method") != "diffq" or row.get("accuracy") is None:
            continue
        head = (f"DiffQ {row['label']} ({size(row)}, "
                f"{human(row['accuracy'], 'pct')})")
        rival = by_name.get(row.get("beaten_by") or "")
        if rival is None:
            line = f"{head}: no baseline at this size or smaller is more accurate"
            # Not beaten, so any such baseline is more than 2 % larger: the trade a user with a
            # little room in the budget would want to know about.
            near = _smallest_better_baseline(row, rows, NEARLY, key)
            if near is not None:
                larger = (near[key] / row[key] - 1) * 100
                line += (f"; {_NAMES[near['method']]} at {near['label']} is {larger:.0f} % larger "
                         f"({size(near)}) and more accurate "
                         f"({human(near['accuracy'], 'pct')}){_where(near)}")
            lines.append(line + ".")
        else:
            lines.append(
                f"{head}: {_NAMES[rival['method']]} at {rival['label']} is "
                f"{'smaller' if rival[key] < row[key] else 'about as small'} "
                f"({size(rival)}) and more accurate "
                f"({human(rival['accuracy'], 'pct')}); prefer it for this size{_where(rival)}.")
    if lines and not any(r.get("method") in ("qat", "lsq") for r in rows):
        lines.append("Compare with uniform QAT and LSQ at the same sizes: add --baseline all.")
    return lines


# ------------------------------------------------------------------ several seeds
SEEDED = ("accuracy", "true_mb", "artifact_mb")


def mean_sd(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def across_seeds(per_seed: list[list[dict]]) -> list[dict]:
    """One row per (method, label), in first-seen order, from each seed's rows: with several
    seeds, ``accuracy`` and the sizes are means, ``accuracy_sd`` (and ``true_mb_sd`` /
    ``artifact_mb_sd`` where sizes vary) the sample sd, and ``seeds`` every seed's values
    (``index``: the seed's index). The rest (artifact, label) is the first seed's."""
    if len(per_seed) <= 1:
        return list(per_seed[0]) if per_seed else []
    groups: dict = {}
    for index, rows in enumerate(per_seed):
        for row in rows:
            groups.setdefault((row["method"], row["label"]), []).append((index, row))
    out = []
    for same in groups.values():
        row = dict(same[0][1])
        row["seeds"] = {"index": [i for i, _ in same],
                        **{k: [r.get(k) for _, r in same] for k in SEEDED}}
        for k in SEEDED:
            values = [v for v in row["seeds"][k] if v is not None]
            if values:
                row[k], sd = mean_sd(values)
                if k == "accuracy" or sd > 0:
                    row[f"{k}_sd"] = sd
        out.append(row)
    return out


def paired(row: dict, rival: dict) -> list[float]:
    """``row``'s accuracy minus ``rival``'s, seed by seed (a row run once, PTQ, counts the
    same for every seed)."""
    mine = dict(zip(row["seeds"]["index"], row["seeds"]["accuracy"], strict=True))
    if "seeds" not in rival:
        return [acc - rival["accuracy"] for acc in mine.values()]
    theirs = dict(zip(rival["seeds"]["index"], rival["seeds"]["accuracy"], strict=True))
    return [acc - theirs[i] for i, acc in mine.items() if i in theirs]


def verdict_of(differences: list[float]) -> str:
    """"ahead" or "behind" when the mean paired difference is larger than the differences'
    own spread (their sd), else "level": the seeds cannot tell the two apart."""
    mean, sd = mean_sd(differences)
    return "level" if abs(mean) <= sd else "ahead" if mean > 0 else "behind"


def paired_verdicts(rows: list[dict], tolerance: float = 0.02, key: str = "true_mb") -> list[str]:
    """One sentence per DiffQ row run on several seeds: against the most accurate baseline
    (mean over seeds; collapsed rows left out) at most ``tolerance`` larger, by the paired
    difference over seeds (``verdict_of``). Each row gets ``paired``: that baseline, the
    differences, their mean and sd, and the verdict."""
    from diffq_cli.units import human

    def size(r: dict) -> str:
        return ("file " if key == "artifact_mb" else "") + human(r[key], "mib")

    lines = []
    for row in rows:
        if row.get("method") != "diffq" or "seeds" not in row or not _measured(row, key):
            continue
        rivals = [r for r in rows if r.get("method") in BASELINES and not r.get("collapsed")
                  and _measured(r, key) and r[key] <= row[key] * (1 + tolerance)]
        n = len(row["seeds"]["index"])
        head = (f"DiffQ {row['label']} ({size(row)}, {human(row['accuracy'], 'pct')} ± "
                f"{row['accuracy_sd']:.2f} over {n} seeds)")
        if not rivals:
            lines.append(f"{head}: no baseline at this size or smaller to compare with.")
            continue
        rival = max(rivals, key=lambda r: r["accuracy"])
        differences = paired(row, rival)
        mean, sd = mean_sd(differences)
        verdict = verdict_of(differences)
        row["paired"] = {"baseline": f"{rival['method']} {rival['label']}",
                         "differences": differences, "mean": mean, "sd": sd, "verdict": verdict}
        other = (f"{_NAMES[rival['method']]} at {rival['label']} ({size(rival)}, "
                 f"{human(rival['accuracy'], 'pct')})")
        amount = f"{abs(mean):.2f} ± {sd:.2f} points, paired over {len(differences)} seeds"
        if verdict == "level":
            lines.append(f"{head}: level with {other}: {mean:+.2f} ± {sd:.2f} points, within "
                         "the seeds' spread.")
        elif verdict == "ahead":
            lines.append(f"{head}: ahead of {other} by {amount}.")
        else:
            lines.append(f"{head}: behind {other} by {amount}; prefer it for this "
                         f"size{_where(rival)}.")
    if lines and not any(r.get("method") in ("qat", "lsq") for r in rows):
        lines.append("Compare with uniform QAT and LSQ at the same sizes: add --baseline all.")
    return lines
