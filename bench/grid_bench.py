"""Quantization grids (``quant.grid``: minmax, learned): weight error, and sizes to aim at.

    python bench/grid_bench.py mse [--weights float.pt]   # (a) weight MSE table, seconds
    python bench/grid_bench.py targets --model test_resnet --input-size 32   # (b)

(a) Relative weight MSE (``sum (q - w)^2 / sum w^2``) of post-training quantization on each grid
at 2/3/4 bits: Gaussian and Laplace tensors (64 x 1152, rows scaled 0.2..2), the conv
weights of torchvision resnet18 (random init) and, with ``--weights float.pt``, the conv and
linear weights of a trained model (e.g. ``bench/out/fm60k/float.pt``). Also two other level
sets of the ``learned`` grid, each at its own MSE-optimal clip: with a zero level, ``q * step``
for ``q`` in ``[-2**(b-1), 2**(b-1) - 1]`` (shipped before the mid-rise levels) and symmetric
narrow ``[-(2**(b-1) - 1), 2**(b-1) - 1]``.

(b) The true size of uniform 2/3/4 bits of a model on each grid (side information included,
rounded up, above DiffQ's floor): the ``targets`` of a ``bench/sweep.py`` spec that compares
DiffQ with uniform QAT and LSQ at those widths.
"""

import argparse
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
    lines = ["| tensor | bits | minmax | learned (mid-rise) | learned, zero level | "
             "learned narrow | minmax / learned |", "|---|---|---|---|---|---|---|"]
    for name, w in _tensors(weights).items():
        for bits in BITS:
            e = {g: _rel_mse(w, g, bits) for g in ("minmax", "learned")}
            e["zero"] = _rel_mse(w, "learned", bits, levels="zero")
            e["narrow"] = _rel_mse(w, "learned", bits, levels="narrow")
            lines.append(f"| {name} | {bits} | {e['minmax']:.4f} | "
                         f"{e['learned']:.4f} | {e['zero']:.4f} | {e['narrow']:.4f} | "
                         f"{e['minmax'] / e['learned']:.1f}x |")
    return "\n".join(lines)


def targets(model_name: str, grid: str, input_size: int, in_chans: int = 3,
            num_classes: int = 10) -> list[float]:
    """True size in MiB of uniform 2/3/4 bits of ``model_name`` on ``grid`` (side information
    included), rounded up (a target is a cap) and above DiffQ's floor (a target below it is
    refused).

    >>> targets("test_resnet", "minmax", 32)  # doctest: +SKIP
    [0.123, 0.166, 0.21]
    """
    from diffq_cli.models.factory import create_model
    from diffq_cli.quant import DiffQuantizer, UniformQuantizer
    from diffq_cli.quant.budget import size_floor

    model = create_model(model_name, num_classes=num_classes, in_chans=in_chans,
                         input_size=input_size)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("mse", "targets"))
    p.add_argument("--weights", default=None, help="mse: also a trained model's float.pt")
    p.add_argument("--model", default="test_resnet", help="targets: the model")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--in-chans", type=int, default=3, help="1 for Fashion-MNIST")
    p.add_argument("--grids", nargs="+", default=["minmax", "learned"])
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.part == "targets":
        for grid in a.grids:
            sizes = targets(a.model, grid, a.input_size, a.in_chans)
            print(f"{grid}: targets: [{', '.join(f'{x:g}' for x in sizes)}]  "
                  f"# uniform {'/'.join(map(str, BITS))} bits")
        return
    OUT.mkdir(parents=True, exist_ok=True)
    text = "Relative weight MSE, post-training quantization per grid\n\n" + mse_table(a.weights)
    path = OUT / "grid_mse.md"
    path.write_text(text + "\n")
    print(text)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
