"""Quantization core benchmark: training-step overhead, state save/restore, packing, file size.

Run ``python bench/quant_bench.py`` (``make bench``); add ``--reference`` in an environment where
the reference DiffQ (``pip install diffq-fixed``, import name ``diffq``) is installed to measure it
side by side in the same run. Prints a table and writes ``bench/out/quant_bench.json``.

    P1  one DiffQ training step / one float step (resnet18, batch 32, 64x64, group 8), interleaved
    P2  get_quantized_state() and restore_quantized_state() seconds, mixed bit widths
    P3  pack / unpack values per second (10M values)
    P4  bytes of torch.save(get_quantized_state()) / true_model_size() bytes
"""

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from diffq_cli import DiffQuantizer, __version__  # noqa: E402
from diffq_cli.quant.pack import pack, unpack  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "quant_bench.json"
TARGETS = {"p1_ratio": 1.3, "p1_stretch": 1.10, "p2_seconds": 0.1, "p3_vs_reference": 1.5}


def load_reference():
    """The reference ``diffq`` package, or None when it is not installed."""
    try:
        import diffq
        import diffq.bitpack
    except ImportError:
        return None
    return diffq


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def resnet18():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


class SmallCNN(nn.Module):
    """A CIFAR-style CNN of about 227k parameters."""

    def __init__(self):
        super().__init__()
        chans = [3, 32, 64, 128, 112]
        layers = []
        for cin, cout in zip(chans, chans[1:], strict=False):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(112 * 4, 10)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def small_cnn():
    torch.manual_seed(0)
    return SmallCNN()


# ------------------------------------------------------------------------------------- P1
def make_step(model, quantizer, x, y, mu=1e-3, file=False):
    """One training step: main SGD on the weights, fused Adam on the bits (if any); ``file``:
    the size penalty is the coded file's (``--size file``; its tables refreshed every 10
    steps, as the finetune loop does)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    bits_opt = None
    if quantizer is not None:
        q = quantizer(model)
        # Fused Adam, as `diffq finetune` uses: one kernel for all bit logits (5x faster on CPU).
        bits_opt = torch.optim.Adam([{"params": []}], fused=True)
        q.setup_optimizer(bits_opt, lr=1e-3)
    model.train()
    count = [0]

    def step():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if quantizer is not None:
            bits_opt.zero_grad()
            if file and count[0] % 10 == 0:
                q.refresh_file_tables()
            count[0] += 1
            loss = loss + mu * (q.model_size(file=True) if file else q.model_size())
        loss.backward()
        opt.step()
        if bits_opt is not None:
            bits_opt.step()

    return step


def bench_p1(ref, steps: int, warmup: int) -> dict:
    torch.manual_seed(1)
    x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 10, (32,))
    variants = {
        "float": None,
        "pool": lambda m: DiffQuantizer(m, group_size=8),
        "learned": lambda m: DiffQuantizer(m, group_size=8, grid="learned"),
        "file": lambda m: DiffQuantizer(m, group_size=8),  # the --size file penalty
    }
    if ref is not None:
        variants["reference"] = lambda m: ref.DiffQuantizer(m, group_size=8)
    steps_fn = {name: make_step(resnet18(), q, x, y, file=name == "file")
                for name, q in variants.items()}
    times = {name: [] for name in variants}
    for i in range(warmup + steps):  # interleaved, so load changes hit every variant alike
        for name, fn in steps_fn.items():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    out = {"step_s": med, "steps": steps}
    for name in variants:
        if name != "float":
            out[f"ratio_{name}"] = med[name] / med["float"]
    return out


# ------------------------------------------------------------------------------------- P2
def mixed_bits(model, rng: torch.Generator, min_bits=2, max_bits=15, low=2, high=10):
    """Sets every ``*_diffq`` logit so that bits are uniform in [low, high] per group."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_diffq"):
                bits = torch.rand(p.shape, generator=rng) * (high - low) + low
                t = ((bits - min_bits) / (max_bits - min_bits)).clamp(1e-4, 1 - 1e-4)
                p.copy_(torch.log(t / (1 - t)))


def bench_p2(make_quantizer, repeats: int) -> dict:
    model = resnet18()
    quantizer = make_quantizer(model)
    mixed_bits(model, torch.Generator().manual_seed(0))
    state = quantizer.get_quantized_state()
    get_s = median_time(quantizer.get_quantized_state, repeats)
    restore_s = median_time(lambda: quantizer.restore_quantized_state(state), repeats)
    return {"get_s": get_s, "restore_s": restore_s, "true_mb": quantizer.true_model_size()}


# ------------------------------------------------------------------------------------- P3
def bench_p3(ref, n: int, widths, repeats: int) -> dict:
    out = {}
    if ref is not None:
        ref_pack, ref_unpack = ref.bitpack.pack, ref.bitpack.unpack
    gen = torch.Generator().manual_seed(0)
    for width in widths:
        values = torch.randint(0, 2**width, (n,), generator=gen)
        row = {}
        ours_in = values.to(torch.int32)  # the dtype our state packs
        data = pack(ours_in, width)
        assert torch.equal(unpack(data, width, n).long(), values)
        row["pack"] = n / median_time(lambda v=ours_in, w=width: pack(v, w), repeats)
        row["unpack"] = n / median_time(lambda d=data, w=width: unpack(d, w, n), repeats)
        if ref is not None:
            ref_in = values.to(torch.int16)  # the dtype the reference quantizer packs
            ref_data = ref.bitpack.pack(ref_in, width)
            assert torch.equal(ref.bitpack.unpack(ref_data, n).long(), values)
            row["ref_pack"] = n / median_time(lambda v=ref_in, w=width: ref_pack(v, w), repeats)
            row["ref_unpack"] = n / median_time(lambda d=ref_data: ref_unpack(d, n), repeats)
        out[str(width)] = row
    return out


# ------------------------------------------------------------------------------------- P4
def saved_bytes(state) -> int:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getbuffer().nbytes


def bench_p4(ref) -> dict:
    out = {}
    cases = {
        "resnet18-init8": (resnet18, False),
        "resnet18-mixed": (resnet18, True),
        "cnn227k-init8": (small_cnn, False),
        "cnn227k-mixed": (small_cnn, True),
    }
    impls = {"ours": DiffQuantizer}
    if ref is not None:
        impls["reference"] = ref.DiffQuantizer
    for case, (make, mixed) in cases.items():
        for impl, cls in impls.items():
            model = make()
            quantizer = cls(model, group_size=8)
            if mixed:
                mixed_bits(model, torch.Generator().manual_seed(0))
            true_bytes = quantizer.true_model_size() * 2**20
            saved = saved_bytes(quantizer.get_quantized_state())
            out[f"{case}/{impl}"] = {
                "params": sum(p.numel() for n, p in model.named_parameters() if "_diffq" not in n),
                "true_bytes": round(true_bytes),
                "saved_bytes": saved,
                "ratio": saved / true_bytes,
                "target_bytes": round(1.02 * true_bytes + 4096),
            }
    return out


# ------------------------------------------------------------------------------------- report
def verdict(value, target, smaller_is_better=True) -> str:
    ok = value <= target if smaller_is_better else value >= target
    return "ok" if ok else "MISSED"


def report(res: dict) -> None:
    p1, p2, p3, p4 = res["p1"], res["p2"], res["p3"], res["p4"]
    print(f"\n== P1 training step, resnet18 b32 64x64 group 8 ({p1['steps']} steps, median) ==")
    for name, sec in p1["step_s"].items():
        ratio = p1.get(f"ratio_{name}")
        extra = ""
        if ratio is not None:
            extra = f"  x{ratio:.3f} of float"
            if name != "reference":
                target, stretch = TARGETS["p1_ratio"], TARGETS["p1_stretch"]
                extra += f"  [target <= {target}: {verdict(ratio, target)}"
                extra += f", stretch {stretch}: {verdict(ratio, stretch)}]"
        print(f"  {name:<10} {sec * 1e3:8.1f} ms{extra}")
    if "ratio_reference" in p1:
        for name in ("pool",):
            overhead = (p1[f"ratio_{name}"] - 1) / max(p1["ratio_reference"] - 1, 1e-9)
            print(
                f"  ours-{name}/reference step time: "
                f"{p1['step_s'][name] / p1['step_s']['reference']:.3f}  "
                f"(overhead above float: {overhead:.2f} of the reference's)"
            )
    print("\n== P2 state save/restore, resnet18 group 8, bits uniform in 2..10 (median) ==")
    target = TARGETS["p2_seconds"]
    for impl, row in p2.items():
        print(
            f"  {impl:<10} get {row['get_s']:.4f} s [{verdict(row['get_s'], target)}]"
            f"   restore {row['restore_s']:.4f} s [{verdict(row['restore_s'], target)}]"
        )
    if "reference" in p2:
        r, o = p2["reference"], p2["ours"]
        print(
            f"  reference/ours: get x{r['get_s'] / o['get_s']:.2f}, "
            f"restore x{r['restore_s'] / o['restore_s']:.2f}"
        )
    print(f"\n== P3 bit packing, {res['p3_n'] / 1e6:g}M values (M values/s, median) ==")
    has_ref = any("ref_pack" in row for row in p3.values())
    head = "  width   pack  unpack"
    print(head + ("   ref pack ref unpack   pack x  unpack x" if has_ref else ""))
    for width, row in p3.items():
        line = f"  {width:>5} {row['pack'] / 1e6:6.0f} {row['unpack'] / 1e6:7.0f}"
        if "ref_pack" in row:
            rp, ru = row["pack"] / row["ref_pack"], row["unpack"] / row["ref_unpack"]
            line += f" {row['ref_pack'] / 1e6:10.0f} {row['ref_unpack'] / 1e6:10.0f}"
            line += f" {rp:8.2f} {ru:9.2f}"
            if width == "4":
                target = TARGETS["p3_vs_reference"]
                line += f"  [target >= {target}x: pack {verdict(rp, target, False)}, "
                line += f"unpack {verdict(ru, target, False)}]"
        print(line)
    print("\n== P4 torch.save(state) bytes vs true size (target <= 1.02 x true + 4 KB) ==")
    for key, row in p4.items():
        ok = verdict(row["saved_bytes"], row["target_bytes"]) if key.endswith("ours") else ""
        print(
            f"  {key:<26} params {row['params']:>9,}  true {row['true_bytes']:>10,} B"
            f"  saved {row['saved_bytes']:>10,} B  x{row['ratio']:.4f}  {ok}"
        )
        if key.endswith("reference"):
            ours = p4[key.replace("reference", "ours")]["saved_bytes"]
            print(f"  {'':<26} ours/reference saved bytes: {ours / row['saved_bytes']:.4f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="also measure the reference")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (P1)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (P1)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of P2/P3 timings")
    parser.add_argument("--values", type=int, default=10_000_000, help="values to pack (P3)")
    parser.add_argument("--out", type=Path, default=OUT, help="JSON results file")
    args = parser.parse_args(argv)

    ref = load_reference() if args.reference else None
    if args.reference and ref is None:
        print("--reference: the reference package 'diffq' is not importable; see bench/README.md")
    print(
        f"diffq_cli {__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
        + (f", reference diffq {getattr(ref, '__version__', '?')}" if ref else "")
    )
    res = {"p1": bench_p1(ref, args.steps, args.warmup)}
    res["p2"] = {"ours": bench_p2(lambda m: DiffQuantizer(m, group_size=8), args.repeats)}
    if ref is not None:
        make_ref = lambda m: ref.DiffQuantizer(m, group_size=8)  # noqa: E731
        res["p2"]["reference"] = bench_p2(make_ref, args.repeats)
    res["p3_n"] = args.values
    res["p3"] = bench_p3(ref, args.values, [4, 1, 2, 3, 8, 12, 15], args.repeats)
    res["p4"] = bench_p4(ref)
    res["meta"] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_end": os.getloadavg()[0],
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "reference": getattr(ref, "__version__", None) if ref else None,
        "targets": TARGETS,
    }
    report(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=float) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
