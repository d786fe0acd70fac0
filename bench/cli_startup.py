"""CLI response times: `diffq --help` (goal < 0.3 s) and `diffq models resnet` (goal < 2 s).

    python bench/cli_startup.py [--repeat 5]

Each command runs in a fresh interpreter (what a user waits for); the median of --repeat runs is
printed. `models` is timed with an empty name cache (first use after installing or upgrading
timm/torchvision) and with a warm one (every later call).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def seconds(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "diffq_cli", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "DIFFQ_CACHE_DIR": cache}
        rows.append(("diffq --help", statistics.median(seconds(["--help"], env)
                                                       for _ in range(repeat)), 0.3))
        cold = []
        for _ in range(repeat):
            for name in os.listdir(cache):
                os.remove(os.path.join(cache, name))
            cold.append(seconds(["models", "resnet"], env))
        rows.append(("diffq models resnet (empty cache)", statistics.median(cold), None))
        rows.append(("diffq models resnet (warm cache)", statistics.median(
            seconds(["models", "resnet"], env) for _ in range(repeat)), 2.0))
    print(f"| command | median of {repeat} (s) | goal (s) |\n|---|---|---|")
    for name, value, goal in rows:
        print(f"| `{name}` | {value:.3f} | {'—' if goal is None else f'< {goal}'} |")


if __name__ == "__main__":
    main()
