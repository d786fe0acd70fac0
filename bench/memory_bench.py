"""Peak process memory of DiffQ training vs the same float training (P5 of ``make bench``).

Each variant runs in a fresh interpreter (peak RSS is per process): torchvision resnet18(10
classes), batch 32, 64x64, SGD with momentum (+ fused Adam for the bits), ``--steps`` training
steps. Reports the whole-process peak RSS and the growth over the float run, in MiB and as a
multiple of the fp32 weights (44.6 MiB for resnet18). Memory, unlike time, does not depend on
what else runs on the machine.

    python bench/memory_bench.py [--steps 5] [--reference]
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import resource, sys, torch, torchvision
from torch import nn
sys.path.insert(0, sys.argv[3])
variant, steps = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=10)
x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 10, (32,))
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
q = bits_opt = None
if variant != "float":
    if variant == "reference":
        import diffq
        q = diffq.DiffQuantizer(model, group_size=8)
    else:
        from diffq_cli import DiffQuantizer
        kwargs = {"learned": {"grid": "learned"}}.get(variant, {})  # pool, file: the default
        q = DiffQuantizer(model, group_size=8, **kwargs)
    bits_opt = torch.optim.Adam([{"params": []}], fused=True)
    q.setup_optimizer(bits_opt, lr=1e-3)
model.train()
for i in range(steps):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    if q is not None:
        bits_opt.zero_grad()
        if variant == "file" and i % 10 == 0:  # --size file: tables measured every 10 steps
            q.refresh_file_tables()
        # The reference's model_size() takes no ``file``: pass it only where it is asked for.
        loss = loss + 1e-3 * (q.model_size(file=True) if variant == "file" else q.model_size())
    loss.backward()
    opt.step()
    if bits_opt is not None:
        bits_opt.step()
weights = sum(p.numel() * 4 for n, p in model.named_parameters() if not n.endswith("_diffq"))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, weights)
"""


def peak(variant: str, steps: int, repeats: int) -> tuple[int, int]:
    """Median peak RSS over ``repeats`` fresh processes (malloc's arenas make one run noisy)."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", CHILD, variant, str(steps), str(ROOT)],
                             capture_output=True, text=True, check=True)
        rss, weights = out.stdout.split()
        runs.append(int(rss))
    return int(statistics.median(runs)), int(weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)  # +-20 MiB per process
    parser.add_argument("--reference", action="store_true", help="also the reference DiffQ")
    args = parser.parse_args()
    variants = ["float", "pool", "learned", "file"] + (
        ["reference"] if args.reference else [])
    rows = {v: peak(v, args.steps, args.repeats) for v in variants}
    base, weights = rows["float"]
    mib = 2**20
    print(f"P5 peak RSS (median of {args.repeats} processes), {args.steps} steps, resnet18 "
          "b32 64x64; fp32 weights "
          f"{weights / mib:.1f} MiB")
    result = {"weights_mib": weights / mib}
    for v, (rss, _) in rows.items():
        extra = (rss - base) / mib
        line = f"  {v:10s} {rss / mib:8.1f} MiB"
        if v != "float":
            ratio = extra * mib / weights
            line += f"   +{extra:6.1f} MiB = {ratio:.2f}x the weights (target <= 2x)"
        print(line)
        result[v] = {"peak_mib": rss / mib, "extra_mib": extra,
                     "extra_x_weights": extra * mib / weights}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
