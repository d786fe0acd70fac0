"""Quantization grids (``quant.grid``: minmax, channel, learned): weight error and accuracy.

    python bench/grid_bench.py mse                  # (a) weight MSE table, seconds
    python bench/grid_bench.py accuracy --seeds 0 1 2   # (b) digits, every method x grid x bits

(a) Relative weight MSE (``sum (q - w)^2 / sum w^2``) of post-training quantization on each grid
at 2/3/4 bits: Gaussian and Laplace tensors (64 x 1152, rows scaled 0.2..2), the conv
weights of torchvision resnet18 (random init) and, with ``--weights float.pt``, the conv and
linear weights of a trained model (e.g. ``bench/out/fm60k/float.pt``). Also two other level
sets of the ``learned`` grid, each at its own MSE-optimal clip: with a zero level, ``q * step``
for ``q`` in ``[-2**(b-1), 2**(b-1) - 1]`` (shipped before the mid-rise levels) and symmetric
narrow ``[-(2**(b-1) - 1), 2**(b-1) - 1]``.

(b) Per grid and seed, one ``bench/tradeoff.py`` call on test_resnet / digits (one shared float
model): DiffQ aimed at the true size of uniform 2/3/4 bits on that grid, uniform QAT, LSQ and
PTQ at 2/3/4 bits. Prints accuracy mean ± sd per (method, width, grid) and the paired
difference to minmax (same seed), and writes it to ``bench/out/grid_accuracy.md``.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch

OUT = Path("bench/out")
BITS = (2, 3, 4)


def _tensors(weights=None):
    torch.manual_seed(0)
    scale = torch.linspace(0.2, 2.0, 64)[:, None]
    out = {"gaussian": torch.randn(64, 1152) * scale,
           "laplace": torch.distributions.Laplace(0.0, 1.0).sample((64, 1152)) * scale}
    from torchvision.models import resnet18

    net = resnet18(num_classes=10)
    out["resnet18 convs"] = [m.weight.detach() for m in net.modules()
                             if isinstance(m, torch.nn.Conv2d)]
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=False)
        state = state.get("model", state.get("state_dict", state))
        out[f"trained ({Path(weights).name})"] = [
            v.float() for k, v in state.items() if k.endswith("weight") and v.dim() >= 2]
    return out


def _own_clip(rows, bits: int, low: int, high: int) -> float:
    """Squared error of ``q * step``, ``q`` in [low, high], at each row's MSE-optimal step."""
    top = rows.abs().amax(1, keepdim=True)
    best = None
    for k in range(2, 26):
        step = top * 0.05 * k / 2 ** (bits - 1)
        e = ((rows / step).round().clamp(low, high) * step - rows).pow(2).sum(1)
        best = e if best is None else torch.minimum(best, e)
    return float(best.sum())


def _rel_mse(weights, grid: str, bits: int, levels: str = "") -> float:
    from diffq_cli import UniformQuantizer

    err = total = 0.0
    half = 2 ** (bits - 1)
    for w in weights if isinstance(weights, list) else [weights]:
        if levels:  # another level set of the learned grid, at its own MSE-optimal clip
            rows = w.reshape(w.shape[0], -1)
            low = -half if levels == "zero" else 1 - half
            err += _own_clip(rows, bits, low, half - 1)
        else:
            layer = torch.nn.Linear(1, 1)
            layer.weight = torch.nn.Parameter(w.clone())
            q = UniformQuantizer(layer, bits=bits, min_size=0, grid=grid, exclude=["bias"])
            with q.enter_quantize():
                err += float((layer.weight.detach() - w).pow(2).sum())
            q.detach()
        total += float(w.pow(2).sum())
    return err / total


def mse_table(weights=None) -> str:
    lines = ["| tensor | bits | minmax | channel | learned (mid-rise) | learned, zero level | "
             "learned narrow | minmax / learned |", "|---|---|---|---|---|---|---|---|"]
    for name, w in _tensors(weights).items():
        for bits in BITS:
            e = {g: _rel_mse(w, g, bits) for g in ("minmax", "channel", "learned")}
            e["zero"] = _rel_mse(w, "learned", bits, levels="zero")
            e["narrow"] = _rel_mse(w, "learned", bits, levels="narrow")
            lines.append(f"| {name} | {bits} | {e['minmax']:.4f} | {e['channel']:.4f} | "
                         f"{e['learned']:.4f} | {e['zero']:.4f} | {e['narrow']:.4f} | "
                         f"{e['minmax'] / e['learned']:.1f}x |")
    return "\n".join(lines)


def _targets(grid: str, input_size: int) -> list[float]:
    """True size of uniform 2/3/4 bits of test_resnet on ``grid`` (side information included)."""
    from diffq_cli.models.factory import create_model
    from diffq_cli.quant import DiffQuantizer, UniformQuantizer
    from diffq_cli.quant.budget import size_floor

    model = create_model("test_resnet", num_classes=10, in_chans=3, input_size=input_size)
    q = DiffQuantizer(model, group_size=8, grid=grid)
    floor = size_floor(q)  # a target below DiffQ's floor is refused
    q.detach()
    sizes = []
    for bits in BITS:
        q = UniformQuantizer(model, bits=bits, grid=grid)
        # rounded up (the target is a cap), and above the floor
        sizes.append(round(max(q.true_model_size(), floor + 0.002) + 5e-4, 3))
        q.detach()
    return sizes


def _tradeoff(args: list[str]) -> str:
    cmd = [sys.executable, "bench/tradeoff.py", "--recipe", "default", "--model", "test_resnet",
           "--data-dir=", "--train-subset", "1438", "--val-subset", "359", "--input-size", "32",
           "--svg=", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return done.stdout


def _key(row: dict, targets: list[float]):
    """(method, bits) of a tradeoff row; DiffQ rows by the uniform width they aim at."""
    if row["method"] == "diffq":
        label = row["label"]
        for bits, t in zip(BITS, targets, strict=True):
            if f"{t:g}" in label:
                return "diffq", bits
        return None
    bits = row.get("bits")
    if bits is None or int(bits) not in BITS:
        return None
    return row["method"], int(bits)


def accuracy(a) -> str:
    OUT.mkdir(parents=True, exist_ok=True)
    weights = OUT / "grid-float.pt"
    results = {}  # (method, bits) -> grid -> seed -> accuracy
    for seed in a.seeds:
        for grid in a.grids:
            targets = _targets(grid, 32)
            out = OUT / f"grid-{grid}-s{seed}.json"
            if not out.exists():
                start = (["--weights", str(weights)] if weights.exists()
                         else [f"--float-epochs={a.float_epochs}"])
                printed = _tradeoff([*start, "--seed", str(seed), "--grid", grid, "--epochs",
                           str(a.epochs), "--qat-bits", *map(str, BITS), "--lsq-bits",
                           *map(str, BITS), "--targets", *map(str, targets), "--out", str(out),
                           *a.overrides])
                if not weights.exists():  # the float model every later call starts from
                    shutil.copy(printed.rsplit("float weights: ", 1)[1].strip(), weights)
            for row in json.loads(out.read_text())["rows"]:
                key = _key(row, targets)
                if key:
                    results.setdefault(key, {}).setdefault(grid, {})[seed] = row["accuracy"]
    return _accuracy_table(results, a.grids)


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _accuracy_table(results: dict, grids: list[str]) -> str:
    others = [g for g in grids if g != "minmax"]
    head = ["method", "bits", *(f"{g} acc %" for g in grids), *(f"{g} - minmax" for g in others)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {"diffq": 0, "qat": 1, "lsq": 2, "ptq": 3}
    for key in sorted(results, key=lambda k: (order.get(k[0], 9), k[1])):
        by_grid = results[key]
        cells = [key[0], str(key[1])]
        cells += [_ms(list(by_grid[g].values())) if g in by_grid else "—" for g in grids]
        for g in others:
            seeds = sorted(set(by_grid.get(g, {})) & set(by_grid.get("minmax", {})))
            diffs = [by_grid[g][s] - by_grid["minmax"][s] for s in seeds]
            cells.append(_ms(diffs) if diffs else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("mse", "accuracy"))
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides (accuracy)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--weights", default=None, help="mse: also a trained model's float.pt")
    p.add_argument("--grids", nargs="+", default=["minmax", "channel", "learned"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--float-epochs", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    if a.part == "mse":
        text = "Relative weight MSE, post-training quantization per grid\n\n" + mse_table(a.weights)
        path = OUT / "grid_mse.md"
    else:
        text = (f"test_resnet / digits, {a.epochs} epoch(s) per method, seeds "
                f"{' '.join(map(str, a.seeds))}; accuracy %, mean ± sd over seeds; paired "
                f"difference to minmax (same seed)\n\n" + accuracy(a))
        path = OUT / "grid_accuracy.md"
    path.write_text(text + "\n")
    print(text)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
