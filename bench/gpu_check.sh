#!/usr/bin/env bash
# The GPU check, for a machine with CUDA; run from anywhere: bash bench/gpu_check.sh
#   1. the gpu-marked tests (tests/test_gpu.py): a DiffQ step, bf16/fp16 steps, state round trip,
#      a short `diffq finetune --device cuda --amp bf16 --channels-last`;
#   2. with 2+ GPUs, a 2-process torchrun (nccl) finetune: one artifact, ranks agree;
#   3. float vs DiffQ step time: resnet18, batch 128, 32x32, bf16, group 8 (target <= 1.05x),
#      then the same with channels-last.
# PY picks the interpreter (default: .venv/bin/python when present, else python3).
# Takes a few minutes; exits non-zero when a test fails (timings are reported, never gated).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}

"$PY" - <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: CUDA is not available here; nothing to check")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
EOF

echo "== gpu tests"
"$PY" -m pytest -m gpu -q tests/test_gpu.py

if [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  echo "== torchrun, 2 GPUs (nccl)"
  tmp=$(mktemp -d)
  DIFFQ_DEBUG_DUMP_DIR="$tmp/dump" "$PY" -m torch.distributed.run --standalone \
    --nproc_per_node 2 -m diffq_cli finetune --model resnet18 --epochs 1 --max-steps 5 \
    data.input_size=32 train.float_epochs=0 --amp bf16 --device cuda --output "$tmp/run" --json \
    > "$tmp/summary.json"
  "$PY" - "$tmp" <<'EOF'
import sys, pathlib, torch
root = pathlib.Path(sys.argv[1])
assert [p.name for p in root.joinpath("run").rglob("model.th")] == ["model.th"]
a, b = (torch.load(root / f"dump/rank{r}.th", weights_only=True)["params"] for r in (0, 1))
bad = [k for k in a if not torch.equal(a[k], b[k])]
assert not bad, f"ranks differ: {bad[:3]}"
print("ddp ok: one artifact, ranks identical")
EOF
  rm -rf "$tmp"
fi

echo "== step time: float vs DiffQ"
"$PY" bench/gpu_step.py --device cuda --batch-size 128 --input-size 32 --amp bf16 --group-size 8
"$PY" bench/gpu_step.py --device cuda --batch-size 128 --input-size 32 --amp bf16 --group-size 8 \
  --channels-last
