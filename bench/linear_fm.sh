#!/bin/bash
# Linear widths on resnet18 / Fashion-MNIST (docs/benchmarks.md "Learned widths in a short
# run"): DiffQ at the true sizes of uniform 3 and 4 bits with quant.param=linear
# optim.bits_travel=3 train.fill_budget=true, 3 seeds, against the sigmoid widths of
# bench/start_widths.sh (bench/out/startfm/fisher-*: same float model, steps and seeds).
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p bench/out/linearfm
declare -A TRUE=( [2]=2.702 [3]=4.031 [4]=5.362 )
for s in 0 1 2; do
  for b in ${BITS:-3 4}; do
    out=bench/out/linearfm/linear-b$b-s$s
    [ -f $out.json ] && continue
    $PY bench/tradeoff.py --weights bench/out/gridfm/float.pt --val-subset 10000 --seed $s \
      --targets ${TRUE[$b]} --diffq-only --diffq-set train.baseline=none quant.param=linear \
      optim.bits_travel=3 train.fill_budget=true --svg= --out $out.json > $out.log 2>&1
    echo "$(date +%T) b$b s$s rc=$?"
  done
done
