"""Float vs DiffQ training-step time on a GPU (the timing part of ``bench/gpu_check.sh``).

    python bench/gpu_step.py                   # cuda, resnet18, batch 128, 32x32, bf16, group 8
    python bench/gpu_step.py --channels-last
    python bench/gpu_step.py --device cpu --steps 2     # smoke check (one round, one warm-up)

Both steps are the loop's (``diffq_cli/train.py``): autocast forward, cross-entropy, a float32
``mu * model_size()`` term and a separate Adam for the bits on the DiffQ side, GradScaler for
fp16. The batch lives on the device already, so data loading is not timed, nor the loop's
one host sync per step (the same for both). Rounds of float and DiffQ steps alternate, so clock
or thermal drift hits both alike; the medians over rounds are compared. Prints ms per step,
images/s and the ratio DiffQ / float (target <= 1.05x).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from diffq_cli.models.factory import create_model  # noqa: E402
from diffq_cli.quant import DiffQuantizer  # noqa: E402

TARGET_RATIO = 1.05


class Trainer:
    """One model, its optimizers and a fixed batch; ``step()`` is one training step."""

    def __init__(self, args, device: torch.device, diffq: bool):
        torch.manual_seed(0)
        model = create_model(args.model, num_classes=10, in_chans=3).to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model, self.device, self.amp, self.mu = model, device, args.amp, args.mu
        # As in train.py: the main optimizer first, then the quantizer, then the bits' Adam.
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                                         weight_decay=5e-4)
        self.quantizer = self.bits_opt = None
        if diffq:
            self.quantizer = DiffQuantizer(model, group_size=args.group_size)
            self.bits_opt = torch.optim.Adam([{"params": []}])
            self.quantizer.setup_optimizer(self.bits_opt, lr=1e-3)
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
        x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.x, self.y = x, torch.randint(0, 10, (args.batch_size,), device=device)
        self.criterion = nn.CrossEntropyLoss()
        model.train()

    def _autocast(self):
        if self.amp == "none":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def step(self) -> None:
        with self._autocast():
            task = self.criterion(self.model(self.x), self.y)
        loss = task.float()
        if self.quantizer is not None:
            loss = loss + self.mu * self.quantizer.model_size()
        self.optimizer.zero_grad(set_to_none=True)
        if self.bits_opt is not None:
            self.bits_opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        if self.bits_opt is not None:
            self.scaler.step(self.bits_opt)
        self.scaler.update()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(trainer: Trainer, steps: int) -> float:
    """Seconds per step over ``steps`` back-to-back steps."""
    _sync(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    _sync(trainer.device)
    return (time.perf_counter() - start) / steps


def measure(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
    if args.amp == "fp16" and device.type != "cuda":
        raise SystemExit("--amp fp16 needs CUDA; use --amp bf16 or none on CPU")
    trainers = {"float": Trainer(args, device, False), "diffq": Trainer(args, device, True)}
    for trainer in trainers.values():  # cudnn autotuning, allocator, lazy init
        for _ in range(args.warmup):
            trainer.step()
    times = {k: [] for k in trainers}
    for _ in range(args.rounds):
        for key, trainer in trainers.items():
            times[key].append(time_steps(trainer, args.steps))
    result = {
        "device": name, "torch": torch.__version__, "model": args.model,
        "batch_size": args.batch_size, "input_size": args.input_size, "amp": args.amp,
        "group_size": args.group_size, "channels_last": args.channels_last,
        "steps": args.steps, "rounds": args.rounds,
    }
    for key, values in times.items():
        seconds = statistics.median(values)
        result[f"{key}_ms"] = 1000 * seconds
        result[f"{key}_images_per_s"] = args.batch_size / seconds
    result["ratio"] = result["diffq_ms"] / result["float_ms"]
    result["target_ratio"] = TARGET_RATIO
    if device.type == "cuda":
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="bf16")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--mu", type=float, default=1e-3)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default 10 on CUDA, 1 on CPU)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating float/DiffQ rounds (default 5 on CUDA, 1 on CPU)")
    parser.add_argument("--max-ratio", type=float, default=None,
                        help="exit 1 when DiffQ / float is above this")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    on_cpu = args.device == "cpu"  # the CPU run is a smoke check: keep it short by default
    args.warmup = (1 if on_cpu else 10) if args.warmup is None else args.warmup
    args.rounds = (1 if on_cpu else 5) if args.rounds is None else args.rounds
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--steps and --rounds must be >= 1, --warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available; use --device cpu for a smoke run", file=sys.stderr)
        return 2
    r = measure(args)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"{r['device']} | torch {r['torch']} | {r['model']} batch {r['batch_size']} "
              f"{r['input_size']}x{r['input_size']} amp {r['amp']} group {r['group_size']} "
              f"channels_last {r['channels_last']}")
        for key in ("float", "diffq"):
            print(f"  {key:5s} {r[f'{key}_ms']:8.2f} ms/step {r[f'{key}_images_per_s']:10.0f} "
                  "images/s")
        verdict = "ok" if r["ratio"] <= TARGET_RATIO else "above target"
        print(f"  ratio DiffQ/float: {r['ratio']:.3f}x (target <= {TARGET_RATIO}x: {verdict})")
    if args.max_ratio is not None and r["ratio"] > args.max_ratio:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
