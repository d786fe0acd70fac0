#!/bin/bash
# The default recipe (resnet18 / embedded digits, 359 validation images) at 6, 4 and 3 MiB,
# seeds 0-2, from one float model (runs/targets/float.pt: the float stage of
# `diffq finetune --target-mb 6 --target-mb 4 --target-mb 3 --baseline qat --output runs/targets`),
# DiffQ alone (a later --baseline overrides), with the recipe's settings plus the given overrides:
#   NAME=sigmoid bench/widths_digits.sh quant.param=bits optim.bits_travel=null
# writes D/NAME-sS/ (summary.json) and NAME-sS.log, D=bench/out/widths by default; a finished
# seed is skipped.
cd "$(dirname "$0")/.."
DIFFQ=${DIFFQ:-.venv/bin/diffq}
W=${W:-runs/targets/float.pt}
D=${D:-bench/out/widths}
mkdir -p $D
for s in ${SEEDS:-0 1 2}; do
  out=$D/$NAME-s$s
  [ -f $out/summary.json ] && continue
  $DIFFQ finetune --weights $W train.float_epochs=0 --seed $s --target-mb 6 --target-mb 4 \
    --target-mb 3 --baseline none --output $out --overwrite "$@" > $out.log 2>&1
  echo "$(date +%T) $NAME seed $s rc=$?"
done
