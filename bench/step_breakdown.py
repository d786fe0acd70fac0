"""Where DiffQ's training-step time goes (issue 14): P1's step with one part switched off at a time.

Every variant is the P1 step of ``quant_bench.py`` (torchvision resnet18, 10 classes, batch 32,
64x64, group 8, SGD on the weights, fused Adam on the bits, ``+ 1e-3 * model_size()``), timed
interleaved in one process so that load changes hit all alike. A variant replaces one piece of
the library for its own steps only (a benchmark-only patch, never a library option):

    float         no quantizer
    diffq         the library as shipped (noise pool)
    no-range      the max - min range treated as a constant (no gradient through it)
    keep-noisy    layers keep the noisy weight for their backward instead of recomputing it
    frozen-bits   the bits computed once and detached: no logits -> bits chain, no bits Adam step
    plain-add     ``w + 0.001 * noise``: noise and placement machinery only, no group scaling,
                  range or bits gradient (the floor of this design)

``--batch 2 --size 32`` shows the part that does not depend on the activations.

    python bench/step_breakdown.py [--steps 20] [--batch 32] [--size 64]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant_bench import make_step, resnet18  # noqa: E402

from diffq_cli import DiffQuantizer  # noqa: E402
from diffq_cli.quant import diffq as diffq_module  # noqa: E402
from diffq_cli.quant import grids, ops  # noqa: E402

# The minmax grid's noisy weight, looked up in grids.py's namespace on every call.
SHIPPED_NOISY = grids.noisy_weight_and_again
SHIPPED_BITS = diffq_module.DiffQuantizer._batched_bits


def no_range(weight, unit, noise, group_size, mult):
    with torch.no_grad():
        low, high, hint = ops.range_with_hint(ops._float_flat(weight))
        span = high - low
    out = ops.NoisyWeight.apply(weight.detach(), weight, unit, noise, span, hint, group_size, mult)
    unit = unit.detach()
    return out, lambda: ops._add_noise(weight, unit, noise, span, group_size, mult)


def keep_noisy(*args):
    out, _ = SHIPPED_NOISY(*args)
    return out, None


def plain_add(weight, unit, noise, group_size, mult):
    return weight + noise.view_as(weight) * 0.001, None


_FROZEN: dict = {}


def frozen_bits(self, unique, reuse=False):
    if id(self) not in _FROZEN:
        with torch.no_grad():
            _FROZEN[id(self)] = SHIPPED_BITS(self, unique, reuse)
    return _FROZEN[id(self)]


VARIANTS = {  # name: (quantized, noisy-weight function, bits function)
    "float": (False, SHIPPED_NOISY, SHIPPED_BITS),
    "diffq": (True, SHIPPED_NOISY, SHIPPED_BITS),
    "no-range": (True, no_range, SHIPPED_BITS),
    "keep-noisy": (True, keep_noisy, SHIPPED_BITS),
    "frozen-bits": (True, SHIPPED_NOISY, frozen_bits),
    "plain-add": (True, plain_add, SHIPPED_BITS),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args(argv)
    torch.manual_seed(1)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    quantizer = lambda m: DiffQuantizer(m, group_size=8)  # noqa: E731
    steps = {name: make_step(resnet18(), quantizer if q else None, x, y)
             for name, (q, _, _) in VARIANTS.items()}
    times = {name: [] for name in VARIANTS}
    try:
        for i in range(args.warmup + args.steps):
            for name, fn in steps.items():
                _, noisy, bits = VARIANTS[name]
                grids.noisy_weight_and_again = noisy
                diffq_module.DiffQuantizer._batched_bits = bits
                start = time.perf_counter()
                fn()
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - start)
    finally:
        grids.noisy_weight_and_again = SHIPPED_NOISY
        diffq_module.DiffQuantizer._batched_bits = SHIPPED_BITS
    med = {name: statistics.median(t) for name, t in times.items()}
    full = med["diffq"] - med["float"]
    print(f"resnet18, batch {args.batch}, {args.size}x{args.size}, group 8, "
          f"{torch.get_num_threads()} threads, median of {args.steps} interleaved steps")
    print(f"{'variant':<12} {'ms':>7} {'x float':>8} {'saves (ms)':>11} {'share of overhead':>18}")
    for name, m in med.items():
        saves = med["diffq"] - m
        share = f"{saves / full:17.0%}" if name not in ("float", "diffq") and full > 0 else ""
        print(f"{name:<12} {m * 1e3:7.1f} {m / med['float']:8.3f} "
              f"{saves * 1e3 if name != 'float' else 0:11.1f} {share:>18}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
