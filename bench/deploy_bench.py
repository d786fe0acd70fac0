"""What a deployer measures, per export format of one artifact: file size, load time, peak
process memory after load and during a batch-1 call, latency at batch 1 and 64, and the max abs
difference from the quantized model (``diffq export``'s own check).

    python bench/deploy_bench.py ARTIFACT [--repeats 50] [--threads 1] [--size N] [--out DIR]

Formats: compact, pt2, pt2-int (``--weights int``), onnx, onnx-int (integers cast and scaled,
folded by onnxruntime at load), onnx-qdq (``--weights qdq``: ``DequantizeLinear``),
onnx-qdq-folded (the same file with onnxruntime told to fold ``DequantizeLinear`` at load:
``session.disable_quant_qdq=1``), safetensors (``load_state_dict`` into the model built by
name). Load time and memory: a fresh subprocess per format (its peak resident set, ``VmHWM``;
``ru_maxrss`` would include the parent's, which Linux carries over exec; the growth over the
peak after importing torch/onnxruntime is in brackets). onnxruntime runs without spinning
threads (``session.intra_op.allow_spinning=0``), which would otherwise steal the cores from
the interleaved torch calls. Latency: one process with every
format loaded, the calls interleaved format by format, median of ``--repeats`` rounds after 3
warm-up rounds (the cores are shared: the 1-minute load average is printed with the table),
once with the default allocator and once with glibc told to keep freed memory
(``MALLOC_ENV``): pt2-int allocates its float weights afresh in every call.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

KINDS = {"compact": ("compact", "float"), "pt2": ("pt2", "float"), "pt2-int": ("pt2", "int"),
         "onnx": ("onnx", "float"), "onnx-int": ("onnx", "int"), "onnx-qdq": ("onnx", "qdq"),
         "onnx-qdq-folded": ("onnx", "qdq"), "safetensors": ("safetensors", "float")}

WORKER = r"""
import json, resource, sys, time
args = json.loads(sys.argv[1])
import torch
torch.set_num_threads(args["threads"])
if any(k.startswith("onnx") for k in args["files"]):
    import onnxruntime as ort

def rss(key="VmHWM"):
    # VmHWM (peak), not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report
    # the peak of the benchmark process that started it. VmRSS: resident now.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # KiB -> MiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def load(kind, path):
    if kind.startswith("onnx"):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args["threads"]
        # No spinning between calls: the interleaved latency run shares the cores with torch.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if kind == "onnx-qdq-folded":
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(s.run(None, {"x": x.numpy()})[0])
    if kind == "safetensors":
        from safetensors.torch import load_file
        from diffq_cli.models.factory import create_model
        model = create_model(**args["spec"])
        model.load_state_dict(load_file(path))
        return model.eval()
    with open(path, "rb") as f:
        return torch.export.load(f).module()

size = args["size"]
gen = torch.Generator().manual_seed(0)
x64 = torch.randn(64, args["chans"], size, size, generator=gen)
x1 = x64[:1].clone()
base, base_now = rss(), rss("VmRSS")
out = {}
if args["mode"] == "memory":
    (kind, path), = args["files"].items()
    t = time.perf_counter()
    run = load(kind, path)
    with torch.inference_mode():
        run(x1)  # the first call: lazy initialisation belongs to loading
        load_s = time.perf_counter() - t
        after_load = rss()
        for _ in range(3):
            run(x1)
    out[kind] = {"load_s": load_s, "base_mb": base, "load_mb": after_load, "call_mb": rss(),
                 "now_mb": rss("VmRSS") - base_now}
else:
    runs = {k: load(k, p) for k, p in args["files"].items()}
    times = {k: {1: [], 64: []} for k in runs}
    with torch.inference_mode():
        for batch, x in ((1, x1), (64, x64)):
            n = args["repeats"] if batch == 1 else max(5, args["repeats"] // 5)
            for i in range(n + 3):
                for k, run in runs.items():
                    t = time.perf_counter()
                    run(x)
                    if i >= 3:
                        times[k][batch].append(time.perf_counter() - t)
    for k, ts in times.items():
        out[k] = {f"ms{b}": 1000 * sorted(v)[len(v) // 2] for b, v in ts.items()}
print(json.dumps(out))
"""


def export_all(artifact: Path, out: Path) -> dict:
    from diffq_cli.files.export import export_artifact

    results = {}
    for kind, (fmt, weights) in KINDS.items():
        if kind == "onnx-qdq-folded":
            results[kind] = dict(results["onnx-qdq"])
            continue
        suffix = {"compact": ".compact.pt2", "pt2": ".pt2", "onnx": ".onnx",
                  "safetensors": ".safetensors"}[kind.removesuffix("-int").removesuffix("-qdq")]
        path = out / f"{kind}{suffix}"
        results[kind] = export_artifact(artifact, path, fmt=fmt, weights=weights)
    return results


# glibc keeps freed blocks of up to 256 MiB instead of returning them to the OS: the per-call
# float weights of pt2-int then reuse warm pages instead of faulting fresh ones in every call.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**26), "MALLOC_TRIM_THRESHOLD_": str(2**28)}


def worker(args: dict, env=None) -> dict:
    proc = subprocess.run([sys.executable, "-c", WORKER, json.dumps(args)], check=True,
                          capture_output=True, text=True, env={**os.environ, **(env or {})})
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch / onnxruntime threads (1: steadier on shared cores)")
    parser.add_argument("--size", type=int, default=None,
                        help="input size of the timed batches (default: the artifact's)")
    parser.add_argument("--out", type=Path, default=None, help="keep the files here")
    opts = parser.parse_args(argv)
    from diffq_cli.files.artifact import load_artifact

    artifact = load_artifact(opts.artifact)
    spec = artifact["model"]
    size = int((artifact.get("data") or {}).get("input_size") or spec.get("input_size") or 32)
    out = opts.out or Path(tempfile.mkdtemp(prefix="deploy_bench_"))
    out.mkdir(parents=True, exist_ok=True)
    exported = export_all(opts.artifact, out)
    size = opts.size or size
    common = {"threads": opts.threads, "size": size, "chans": spec["in_chans"], "spec": spec,
              "repeats": opts.repeats}
    rows = {}
    for kind, r in exported.items():
        rows[kind] = worker({**common, "mode": "memory", "files": {kind: r["path"]}})[kind]
    files = {k: r["path"] for k, r in exported.items()}
    timing = worker({**common, "mode": "latency", "files": files})
    tuned = worker({**common, "mode": "latency", "files": files}, MALLOC_ENV)
    load1 = os.getloadavg()[0]
    ref = exported["pt2"]["bytes"]
    print(f"\n{spec['name']}, input {spec['in_chans']}x{size}x{size}, "
          f"true size {exported['pt2']['true_mb']:.2f} MiB, {opts.threads} threads, "
          f"load average {load1:.2f}\n")
    print("| format | file MiB | vs pt2 | load s | peak RSS load, MiB (+ over imports) "
          "| peak RSS batch-1 calls (+) | RSS growth after calls | batch 1 ms | batch 64 ms "
          "| batch 1 / 64 ms, glibc tuned | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, r in exported.items():
        m, t, u = rows[kind], timing[kind], tuned[kind]
        print(f"| {kind} | {r['bytes'] / 2**20:.2f} | {r['bytes'] / ref:.2f}x | "
              f"{m['load_s']:.2f} | {m['load_mb']:.0f} (+{m['load_mb'] - m['base_mb']:.0f}) | "
              f"{m['call_mb']:.0f} (+{m['call_mb'] - m['base_mb']:.0f}) | +{m['now_mb']:.0f} | "
              f"{t['ms1']:.2f} | {t['ms64']:.1f} | {u['ms1']:.2f} / {u['ms64']:.1f} | "
              f"{r['max_abs_diff']:.1e} |")
    ints = {k: exported[k]["int"] for k in ("pt2-int", "onnx-int", "onnx-qdq")}
    print(f"\ninteger tensors: {json.dumps(ints)}")


if __name__ == "__main__":
    main()
