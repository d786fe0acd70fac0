#!/bin/bash
# Training noise against rounding (docs/benchmarks.md "Training noise"): DiffQ on resnet18 /
# Fashion-MNIST at the true size of uniform b bits (the float model of bench/grid_fm.sh,
# bench/out/gridfm/float.pt; 3,200 train / all 10,000 validation images, 50 steps) with
# quant.noise=gaussian (the paper's: std half a step, 3x the variance of rounding) against
# quant.noise=uniform (a step wide: the variance of rounding), on each grid, 3 seeds.
# PARAM=linear: the widths as plain numbers (a width at the floor sits at exactly min_bits, not
# at the sigmoid's min_bits + 0.3), optim.bits_travel=3. Then: python bench/noise_seeds.py
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p bench/out/noisefm
declare -A T=( [minmax2]=2.702 [minmax3]=4.031 [learned2]=2.711 [learned3]=4.040 )
for b in ${BITS:-2}; do
  for s in ${SEEDS:-0 1 2}; do
    for g in ${GRIDS:-minmax learned}; do
      for n in ${NOISES:-gaussian uniform}; do
        out=bench/out/noisefm/$g-$n${PARAM:+-$PARAM}-b$b-s$s
        [ -f $out.json ] && continue
        $PY bench/tradeoff.py --weights bench/out/gridfm/float.pt --val-subset 10000 --seed $s \
          --grid $g --targets ${T[$g$b]} --diffq-only --diffq-set train.baseline=none \
          quant.noise=$n ${PARAM:+quant.param=$PARAM optim.bits_travel=3} --svg= \
          --out $out.json > $out.log 2>&1
        echo "$(date +%T) $g $n b$b s$s rc=$?"
      done
    done
  done
done
