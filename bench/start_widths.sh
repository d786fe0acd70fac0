#!/bin/bash
# Start widths of a size target (docs/benchmarks.md "Start widths by loss per bit"): DiffQ at
# the true sizes of uniform 2/3/4 bits with train.start_widths=fisher, 3 seeds, on the float
# models of bench/file_fm.sh (resnet18 / Fashion-MNIST, bench/out/gridfm/float.pt) and
# bench/file_digits.sh (test_resnet / digits, bench/out/filedigits/float.pt). The
# `train.start_widths=size` rows are those scripts' true-size runs (same float models, steps,
# seeds). START=size reruns this with the other start instead.
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
S=${START:-fisher}
mkdir -p bench/out/startfm bench/out/startdigits
declare -A TRUE=( [2]=2.702 [3]=4.031 [4]=5.362 )
for s in 0 1 2; do
  for b in 2 3 4; do
    $PY bench/tradeoff.py --weights bench/out/gridfm/float.pt --val-subset 10000 --seed $s \
      --targets ${TRUE[$b]} --diffq-only --diffq-set train.baseline=none train.start_widths=$S \
      --svg= --out bench/out/startfm/$S-b$b-s$s.json > bench/out/startfm/$S-b$b-s$s.log 2>&1
  done
  $PY bench/tradeoff.py --recipe default --model test_resnet --data-dir "" --train-subset 1438 \
    --val-subset 359 --input-size 32 --epochs 3 --svg= --weights bench/out/filedigits/float.pt \
    --seed $s --targets 0.1226 0.1660 0.2094 --diffq-only \
    --diffq-set train.baseline=none train.start_widths=$S \
    --out bench/out/startdigits/$S-s$s.json > bench/out/startdigits/$S-s$s.log 2>&1
  echo "$(date +%T) seed $s done"
done
