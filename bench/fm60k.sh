#!/bin/bash
# Every method from a *trained* float model (docs/benchmarks.md "From a trained float model"):
# resnet18 / Fashion-MNIST trained on all 60,000 images for 2 epochs (the recipe's float stage),
# then, as bench/grid_fm.sh, DiffQ at each grid's true size of uniform 2, 3 and 4 bits, uniform
# QAT and LSQ at those bits, 3,200 training images (50 steps) per method, all 10,000 validation
# images, seeds 0-2, grids minmax and learned. Then: python bench/grid_seeds.py bench/out/fm60k
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
D=bench/out/fm60k
mkdir -p $D
if [ ! -f $D/float.pt ]; then
  $PY -m diffq_cli finetune --recipe fashion-mnist-resnet18 \
    --data-dir /usr/share/datasets/fashion-mnist data.input_size=28 data.val_subset=10000 \
    train.float_epochs=2 --max-steps 1 --mu 0 --baseline none --output $D/float-run \
    --overwrite > $D/float.log 2>&1 || exit 1
  cp $D/float-run/float.pt $D/float.pt
fi
W=$D/float.pt D=$D GRIDS="${GRIDS:-minmax learned}" bench/grid_fm.sh
