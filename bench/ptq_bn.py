"""Post-training quantization with and without BatchNorm recalibration, per grid and width:
why PTQ on the ``learned`` grid collapsed although its weight error is lower.

    python bench/ptq_bn.py FLOAT.pt [--val-subset 10000] [--batches 20]

FLOAT.pt: a resnet18 state_dict for Fashion-MNIST (1 channel, 10 classes), e.g. the float model
``bench/grid_fm.sh`` trains (bench/out/gridfm/float.pt); data from Debian's dataset-fashion-mnist.
"""

import argparse

import torch

from diffq_cli import UniformQuantizer
from diffq_cli.config.schema import DataConfig
from diffq_cli.data.loaders import build_loaders
from diffq_cli.models.factory import create_model
from diffq_cli.quant.calibrate import recalibrate_batchnorm

FASHION = "/usr/share/datasets/fashion-mnist"


def accuracy(model, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return 100 * correct / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights")
    p.add_argument("--val-subset", type=int, default=10000)
    p.add_argument("--batches", type=int, default=20, help="training batches for BatchNorm")
    a = p.parse_args()
    spec = DataConfig(dataset="fashion-mnist", data_dir=FASHION, input_size=28,
                      val_subset=a.val_subset, train_subset=3200, batch_size=64)
    train, val, _ = build_loaders(spec)
    print("| grid | bits | PTQ % | PTQ + BatchNorm recalibration % |\n|---|---|---|---|")
    for grid in ("minmax", "learned"):
        for bits in (2, 3, 4):
            model = create_model("resnet18", num_classes=10, in_chans=1)
            model.load_state_dict(torch.load(a.weights, weights_only=True))
            UniformQuantizer(model, bits=bits, grid=grid)
            plain = accuracy(model, val)
            recalibrate_batchnorm(model, train, a.batches)
            print(f"| {grid} | {bits} | {plain:.2f} | {accuracy(model, val):.2f} |", flush=True)


if __name__ == "__main__":
    main()
