#!/bin/bash
# Grid comparison on resnet18 / Fashion-MNIST (docs/benchmarks.md, "Quantization grids"): for each
# bits in BITS, seed in SEEDS and grid in GRIDS one bench/tradeoff.py call (DiffQ at that grid's
# true size of uniform b bits, uniform QAT and LSQ at b bits) from one float model, all 10,000
# validation images. PTQ rows only in the b2 s0 call of each grid (they do not depend on the seed).
# Several copies may run at once: each call is claimed by creating its log first. First make the
# float model: python bench/tradeoff.py --val-subset 10000 --grid minmax --targets 2.702 \
#   --qat-bits 2 --lsq-bits 2 --svg= --out bench/out/gridfm/minmax-b2-s0.json  (its float.pt ->
# bench/out/gridfm/float.pt). Then: bench/grid_fm.sh; python bench/grid_seeds.py
# W=float.pt D=dir: another float model (bench/fm60k.sh: one trained on all 60,000 images);
# DIFFQ_SET="key=value ...": recipe overrides for the DiffQ runs only; SET="key=value ...": for
# every run (e.g. SET=optim.lr=0.005); EPOCHS=3: 3x the steps.
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
W=${W:-bench/out/gridfm/float.pt}
D=${D:-bench/out/gridfm}
mkdir -p $D
[ -n "$WAITPID" ] && while kill -0 $WAITPID 2>/dev/null; do sleep 5; done
declare -A T=( [minmax2]=2.702 [minmax3]=4.031 [minmax4]=5.362 [learned2]=2.711 [learned3]=4.040 [learned4]=5.371 [channel2]=2.720 [channel3]=4.049 [channel4]=5.380 )
run() { # grid bits seed
  local g=$1 b=$2 s=$3 out=$D/$1-b$2-s$3 extra=()
  ( set -C; : > $out.log ) 2>/dev/null || return   # claimed by another stream (atomic)
  [ "$b$s" != "20" ] && extra=(--diffq-set train.baseline=none $DIFFQ_SET)
  [ "$b$s" == "20" ] && [ -n "$DIFFQ_SET" ] && extra=(--diffq-set $DIFFQ_SET)
  echo "$(date +%T) start $g b$b s$s ${extra[*]}"
  local t0=$(date +%s)
  $PY bench/tradeoff.py --weights $W --val-subset 10000 --seed $s --grid $g --targets ${T[$g$b]} \
     --epochs ${EPOCHS:-1} \
     --qat-bits $b --lsq-bits $b --svg= --out $out.json $SET "${extra[@]}" > $out.log 2>&1
  echo "$(date +%T) done $g b$b s$s rc=$? $(( $(date +%s) - t0 )) s"
}
for b in ${BITS:-2 3 4}; do
  for s in ${SEEDS:-0 1 2}; do for g in ${GRIDS:-minmax learned}; do run $g $b $s; done; done
done
