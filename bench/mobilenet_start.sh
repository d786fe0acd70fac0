#!/bin/bash
# torchvision mobilenet_v2 (depthwise-separable) on Fashion-MNIST, 6,000 train / 2,000 val
# images at 32x32, one float model (3 epochs), then 2 epochs per run: DiffQ at the true sizes
# of uniform 2.5, 3 and 4 bits with each start (train.start_widths fisher / size) and uniform
# QAT at 2, 3 and 4 bits, seeds 0-2 (docs/benchmarks.md "Start widths by loss per bit").
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
D=bench/out/mbv2
mkdir -p $D
COMMON=(--model mobilenet_v2 --train-subset 6000 --val-subset 2000 --input-size 32 --epochs 2
        --svg= --targets 0.835 0.966 1.227)
if [ ! -f $D/float.pt ]; then
  $PY bench/tradeoff.py "${COMMON[@]}" --float-epochs 3 --seed 0 --diffq-only \
    --diffq-set train.baseline=none --out $D/float-run.json > $D/float-run.log 2>&1
  cp "$(sed -n 's/.*float weights: //p' $D/float-run.log)" $D/float.pt
fi
for s in 0 1 2; do
  $PY bench/tradeoff.py "${COMMON[@]}" --seed $s --weights $D/float.pt --qat-bits 2 3 4 --lsq-bits \
    --diffq-set train.baseline=none train.start_widths=fisher --out $D/fisher3-s$s.json \
    > $D/fisher3-s$s.log 2>&1
  $PY bench/tradeoff.py "${COMMON[@]}" --seed $s --weights $D/float.pt --diffq-only \
    --diffq-set train.baseline=none train.start_widths=size --out $D/size3-s$s.json \
    > $D/size3-s$s.log 2>&1
  echo "$(date +%T) seed $s done"
done
