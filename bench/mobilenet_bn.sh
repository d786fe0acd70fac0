#!/bin/bash
# mobilenet_v2 / Fashion-MNIST, the setting of bench/mobilenet_final.sh: DiffQ with BatchNorm
# statistics re-estimated on the quantized weights (train.bn_recalibrate=20) before every
# evaluation and before saving, against the same runs without (final-s*.json): whether
# statistics gathered under training noise cost accuracy on a depthwise network.
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
D=bench/out/mbv2
for s in ${SEEDS:-0 1 2}; do
  out=$D/bn-s$s
  [ -f $out.json ] && continue
  $PY bench/tradeoff.py --model mobilenet_v2 --train-subset 6000 --val-subset 2000 \
    --input-size 32 --epochs 2 --svg= --targets 0.835 0.966 1.227 --seed $s \
    --weights $D/float.pt --diffq-only --diffq-set train.baseline=none train.bn_recalibrate=20 \
    --out $out.json.tmp > $out.log 2>&1 && mv $out.json.tmp $out.json
  echo "$(date +%T) seed $s rc=$?"
done
