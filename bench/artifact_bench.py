"""Artifact sizes and speed: version 1 (gzip over bit-packed levels) vs version 2 (entropy-coded)
vs the order-0 entropy bound, on resnet18 with trained weights.

Rows: the float weights quantized with widths forced to 2, 3, 4 and 8 bits (UniformQuantizer,
per-tensor min/max), and the learned mixed-width state of a DiffQ run. Columns: bit-packed
(true) size, v1 and v2 bytes on disk, the bound, v2 / bound, encode and decode seconds of v2
(the whole file: coding + torch.save + gzip, and read + checks + decode back to the bit-packed
state), and for the learned row a full ``diffq eval`` of both files (accuracies must match).

    python bench/artifact_bench.py                   # runs finetune --mu 1 --epochs 1 first
    python bench/artifact_bench.py --run runs/DIR    # reuse a run (model.th, and
                                                     # checkpoint.pt or else float.pt)

Seconds are the best of ``--repeat`` runs (the cores are often shared), with the 1-minute load
average printed next to each row.

Target (issue 10): v2 <= 1.02 x bound + 16 KB in every row; decode <= 1 s for resnet18.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffq_cli import UniformQuantizer
from diffq_cli.fileio import torch_bytes
from diffq_cli.files.artifact import FORMAT, read_file, save_artifact, versions
from diffq_cli.models.factory import create_model
from diffq_cli.quant.summary import summarize_state
from diffq_cli.run.evaluate import evaluate_artifact

MB = 2**20


def finetune(out: Path) -> Path:
    cmd = [sys.executable, "-m", "diffq_cli", "finetune", "--model", "resnet18", "--mu", "1",
           "--epochs", "1", "--output", str(out), "--overwrite"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def v1_bytes(state, artifact) -> bytes:
    """The file today's reader still accepts and the previous diffq wrote (version 1)."""
    obj = {"format": FORMAT, "version": 1, "state": state, "versions": versions(),
           **{k: artifact[k] for k in ("model", "data", "recipe", "metrics")}}
    return torch_bytes(obj, compress=True)


def measure(name, state, artifact, tmp: Path, evaluate=False, repeat=3) -> dict:
    v1 = tmp / f"{name}.v1.th"
    v1.write_bytes(v1_bytes(state, artifact))
    v2 = tmp / f"{name}.v2.th"
    encode = decode = decode_v1 = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        save_artifact(v2, state, artifact["model"], artifact["data"], artifact["recipe"],
                      artifact["metrics"])
        encode = min(encode, time.perf_counter() - start)
        start = time.perf_counter()
        _, back = read_file(v2)
        decode = min(decode, time.perf_counter() - start)
        start = time.perf_counter()
        read_file(v1)
        decode_v1 = min(decode_v1, time.perf_counter() - start)
    summary = summarize_state(state)
    row = {"row": name, "true_mb": summary["true_mb"], "v1_mb": v1.stat().st_size / MB,
           "v2_mb": v2.stat().st_size / MB, "bound_mb": summary["bound_mb"],
           "encode_s": encode, "decode_s": decode, "decode_v1_s": decode_v1,
           "load": os.getloadavg()[0]}
    row["v2_over_bound"] = row["v2_mb"] / row["bound_mb"]
    row["target_ok"] = row["v2_mb"] * MB <= 1.02 * row["bound_mb"] * MB + 16 * 1024
    for key, entry in state["quantized"].items():  # the decoded state is the written one
        assert torch.equal(entry["data"], back["state"]["quantized"][key]["data"]), key
    if evaluate:
        acc1 = evaluate_artifact(v1)["accuracy"]
        acc2 = evaluate_artifact(v2)["accuracy"]
        assert acc1 == acc2, (acc1, acc2)
        row["eval_acc"] = acc2
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="finetune run dir to reuse")
    parser.add_argument("--widths", default="2,3,4,8")
    parser.add_argument("--repeat", type=int, default=3, help="timings: best of N")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = args.run or finetune(tmp / "run")
        _, artifact = read_file(run / "model.th")
        spec = artifact["model"]
        # The trained float weights: the DiffQ run's (checkpoint.pt, kept with
        # --keep-checkpoint) or else its float starting point (float.pt).
        ckpt_path = run / "checkpoint.pt"
        if ckpt_path.is_file():
            weights = torch.load(ckpt_path, map_location="cpu", weights_only=True)["model"]
        else:
            weights = torch.load(run / "float.pt", map_location="cpu", weights_only=True)
        rows = []
        for width in [int(w) for w in args.widths.split(",")]:
            model = create_model(spec["name"], num_classes=spec["num_classes"],
                                 in_chans=spec["in_chans"], input_size=spec.get("input_size"))
            own = model.state_dict()
            model.load_state_dict({k: v for k, v in weights.items() if k in own})
            state = UniformQuantizer(model, bits=width).get_quantized_state()
            rows.append(measure(f"{width} bits", state, artifact, tmp, repeat=args.repeat))
        rows.append(measure("learned", artifact["state"], artifact, tmp, evaluate=True,
                            repeat=args.repeat))
    source = args.run or "finetune --mu 1 --epochs 1"
    print(f"torch threads: {torch.get_num_threads()}; run: {source}; seconds: best of "
          f"{args.repeat}")
    print("| widths | bit-packed | v1 (gzip) | v2 (coded) | order-0 bound | v2 / bound | "
          "target | v2 encode s | v2 decode s | v1 decode s | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    mean_bits = summarize_state(artifact["state"])["mean_bits"]
    for r in rows:
        mean = f" (mean {mean_bits:.2f})" if r["row"] == "learned" else ""
        print(f"| {r['row']}{mean} | {r['true_mb']:.2f} MB | {r['v1_mb']:.2f} MB | "
              f"{r['v2_mb']:.2f} MB | {r['bound_mb']:.2f} MB | {r['v2_over_bound']:.3f}x | "
              f"{'ok' if r['target_ok'] else 'MISSED'} | {r['encode_s']:.2f} | "
              f"{r['decode_s']:.2f} | {r['decode_v1_s']:.2f} | {r['load']:.1f} |")
    learned = rows[-1]
    print(f"diffq eval of the learned artifact, v1 and v2 files: {learned['eval_acc']:.2f}% both")


if __name__ == "__main__":
    main()
