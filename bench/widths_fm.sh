#!/bin/bash
# DiffQ alone, with other width settings, on resnet18 / Fashion-MNIST from the float model of
# bench/fm60k.sh (88.89 %), at a grid's true sizes of uniform 2, 3 and 4 bits, seeds 0-2, 50
# steps, all 10,000 validation images; the baselines and the recipe-setting DiffQ runs to pair
# with are bench/fm60k.sh's (bench/out/fm60k/{minmax,learned,min1}-b*-s*.json).
#   NAME=linear GRID=minmax bench/widths_fm.sh quant.param=linear optim.bits_travel=3
# writes bench/out/fm60k/NAME-bB-sS.json (resumable: a finished seed is skipped).
cd "$(dirname "$0")/.."
D=bench/out/fm60k
G=${GRID:-minmax}
declare -A T=( [minmax2]=2.702 [minmax3]=4.031 [minmax4]=5.362 [learned2]=2.711 [learned3]=4.040 [learned4]=5.371 )
for b in ${BITS:-2 3 4}; do
  bench/seeds.sh $D/$NAME-b$b --weights $D/float.pt --val-subset 10000 --grid $G \
    --targets ${T[$G$b]} --diffq-only --svg= --diffq-set train.baseline=none "$@"
done
