#!/bin/bash
# mobilenet_v2 / Fashion-MNIST on the float model of bench/mobilenet_start.sh (run that first:
# its fisher3-s*.json hold the uniform QAT rows of the same float model, steps and seeds),
# 6,000 train / 2,000 val images at 32x32, 2 epochs per run, seeds 0-2, the shipped recipe's
# settings (fisher start, uniform noise, budget filled at the freeze):
#   final: DiffQ at the true sizes of uniform 2.5, 3 and 4 bits, plus LSQ at 2, 3 and 4 bits;
#   bn:    the same DiffQ runs with BatchNorm statistics re-estimated on the quantized weights
#          (train.bn_recalibrate=20) before every evaluation and before saving;
#   linear: the same DiffQ runs with linear widths held at the budget (quant.param=linear
#          optim.bits_travel=3; docs/benchmarks.md, "Linear widths held at the budget").
# Then: python bench/final_seeds.py
cd "$(dirname "$0")/.."
D=bench/out/mbv2
M=(--model mobilenet_v2 --train-subset 6000 --val-subset 2000 --input-size 32 --epochs 2
   --svg= --targets 0.835 0.966 1.227 --weights $D/float.pt)
bench/seeds.sh $D/final "${M[@]}" --qat-bits --lsq-bits 2 3 4 --diffq-set train.baseline=none
bench/seeds.sh $D/bn "${M[@]}" --diffq-only --diffq-set train.baseline=none \
  train.bn_recalibrate=20
bench/seeds.sh $D/linear "${M[@]}" --diffq-only --diffq-set train.baseline=none \
  quant.param=linear optim.bits_travel=3
# learned: every method on quant.grid=learned (DiffQ with its 1-bit floor) at that grid's true
# sizes of uniform 2.5, 3 and 4 bits (per-channel scales add 0.030 MiB to each).
L=(--model mobilenet_v2 --train-subset 6000 --val-subset 2000 --input-size 32 --epochs 2
   --svg= --weights $D/float.pt --grid learned --targets 0.865 0.997 1.258)
bench/seeds.sh $D/learned "${L[@]}" --qat-bits 2 3 4 --lsq-bits 2 3 4 \
  --diffq-set train.baseline=none
