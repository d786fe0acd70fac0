#!/bin/bash
# The default recipe with E DiffQ epochs for E in EPOCHS (default "3 6 9"), every method (DiffQ
# at 6, 4 and 3 MiB; PTQ, uniform QAT and LSQ, each with the same E epochs), seeds 0-2, from the
# float model of bench/widths_digits.sh. Writes bench/out/epochs/eE-sS/ (summary.json) and
# eE-sS.log; a finished run is skipped. Then: python bench/epochs_seeds.py
cd "$(dirname "$0")/.."
for e in ${EPOCHS:-3 6 9}; do
  NAME=e$e D=bench/out/epochs bench/widths_digits.sh --baseline all train.epochs=$e "$@"
done
