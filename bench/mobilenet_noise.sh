#!/bin/bash
# mobilenet_v2 / Fashion-MNIST (the setting of bench/mobilenet_start.sh: 6,000 train / 2,000 val
# at 32x32, its float model, 2 epochs per run, seeds 0-2): DiffQ with the fisher start at the
# true sizes of uniform 2.5, 3 and 4 bits with quant.noise=uniform (rounding's variance), to set
# beside that script's gaussian-noise rows (bench/out/mbv2/fisher3-s*.json).
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
D=bench/out/mbv2
for s in ${SEEDS:-0 1 2}; do
  out=$D/uniform3-s$s
  [ -f $out.json ] && continue
  $PY bench/tradeoff.py --model mobilenet_v2 --train-subset 6000 --val-subset 2000 \
    --input-size 32 --epochs 2 --svg= --targets 0.835 0.966 1.227 --seed $s \
    --weights $D/float.pt --diffq-only \
    --diffq-set train.baseline=none train.start_widths=fisher quant.noise=uniform \
    --out $out.json > $out.log 2>&1
  echo "$(date +%T) seed $s rc=$?"
done
