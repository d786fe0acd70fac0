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
  # The float stage writes float-run/float.pt; the DiffQ stage after it is not needed (and
  # --max-steps would cap the float stage too), so it is stopped once the file is there.
  rm -rf $D/float-run
  $PY -m diffq_cli finetune --recipe fashion-mnist-resnet18 \
    --data-dir /usr/share/datasets/fashion-mnist data.input_size=28 data.val_subset=10000 \
    data.batch_size=64 train.float_epochs=2 --mu 0 --baseline none --output $D/float-run \
    > $D/float.log 2>&1 &
  pid=$!
  while kill -0 $pid 2>/dev/null && [ ! -f $D/float-run/float.pt ]; do sleep 5; done
  kill $pid 2>/dev/null; wait $pid 2>/dev/null
  [ -f $D/float-run/float.pt ] || exit 1
  cp $D/float-run/float.pt $D/float.pt
fi
W=$D/float.pt D=$D GRIDS="${GRIDS:-minmax learned}" bench/grid_fm.sh
