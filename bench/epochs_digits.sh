#!/bin/bash
# The default recipe (resnet18 / embedded digits, 359 validation images) with E DiffQ epochs for
# E in EPOCHS (default "3 6 9"), every method (DiffQ at 6, 4 and 3 MiB; PTQ, uniform QAT and LSQ
# at 2-8 bits, each with the same E epochs), seeds 0-2, from one float model (runs/targets/float.pt:
# the float stage of `diffq finetune --target-mb 6 --target-mb 4 --target-mb 3 --baseline qat
# --output runs/targets`). Writes bench/out/epochs/eE-sS/ (summary.json) and eE-sS.log; a finished
# run is skipped. Then: python bench/epochs_seeds.py
cd "$(dirname "$0")/.."
DIFFQ=${DIFFQ:-.venv/bin/diffq}
W=${W:-runs/targets/float.pt}
mkdir -p bench/out/epochs
for e in ${EPOCHS:-3 6 9}; do
  for s in ${SEEDS:-0 1 2}; do
    out=bench/out/epochs/e$e-s$s
    [ -f $out/summary.json ] && continue
    $DIFFQ finetune --weights $W train.float_epochs=0 --seed $s --target-mb 6 --target-mb 4 \
      --target-mb 3 --baseline all train.epochs=$e --output $out --overwrite "$@" > $out.log 2>&1
    echo "$(date +%T) epochs $e seed $s rc=$?"
  done
done
