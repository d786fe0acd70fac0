#!/bin/bash
# test_resnet / digits with the shipped recipe's settings (fisher start, uniform noise, budget
# filled at the freeze): DiffQ at the true sizes of uniform 2, 3 and 4 bits, seeds 0-2, on the
# float model of bench/file_digits.sh, whose true-s*.json hold the uniform QAT and LSQ rows of
# the same float model, steps and seeds. Then: python bench/final_seeds.py
cd "$(dirname "$0")/.."
D=bench/out/filedigits
bench/seeds.sh $D/final --recipe default --model test_resnet --data-dir "" --train-subset 1438 \
  --val-subset 359 --input-size 32 --epochs 3 --svg= --weights $D/float.pt \
  --targets 0.1226 0.1660 0.2094 --diffq-only --diffq-set train.baseline=none
