#!/bin/bash
# mobilenet_v2 / Fashion-MNIST with the shipped recipe's settings (fisher start, uniform noise,
# budget filled at the freeze): DiffQ at the true sizes of uniform 2.5, 3 and 4 bits plus LSQ at
# 2, 3 and 4 bits, seeds 0-2, on the float model of bench/mobilenet_start.sh (run that first:
# its fisher3-s*.json hold the uniform QAT rows of the same float model, steps and seeds).
# Then: python bench/final_seeds.py
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
D=bench/out/mbv2
for s in ${SEEDS:-0 1 2}; do
  out=$D/final-s$s
  [ -f $out.json ] && continue
  $PY bench/tradeoff.py --model mobilenet_v2 --train-subset 6000 --val-subset 2000 \
    --input-size 32 --epochs 2 --svg= --targets 0.835 0.966 1.227 --seed $s \
    --weights $D/float.pt --qat-bits --lsq-bits 2 3 4 \
    --diffq-set train.baseline=none --out $out.json.tmp > $out.log 2>&1 \
    && mv $out.json.tmp $out.json
  echo "$(date +%T) seed $s rc=$?"
done
