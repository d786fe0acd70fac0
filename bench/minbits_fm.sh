#!/bin/bash
# DiffQ on the learned grid with a 1-bit floor (quant.min_bits=1, the recipes' default on that
# grid) on resnet18 / Fashion-MNIST, from the float model of bench/fm60k.sh, at that grid's true
# sizes of uniform 2, 3 and 4 bits, seeds 0-2, 50 steps, all 10,000 validation images: the
# "One bit on the learned grid" rows of docs/benchmarks.md (min_bits=2 and the baselines: the
# learned-b*-s*.json runs of bench/fm60k.sh). One call per size and seed, resumable.
cd "$(dirname "$0")/.."
D=bench/out/fm60k
declare -A T=( [2]=2.711 [3]=4.040 [4]=5.371 )
for b in ${BITS:-2 3 4}; do
  bench/seeds.sh $D/min1-b$b --weights $D/float.pt --val-subset 10000 --grid learned \
    --targets ${T[$b]} --diffq-only --svg= --diffq-set train.baseline=none quant.min_bits=1
done
