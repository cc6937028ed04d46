"""Where the vmap engine starts to gain: K cells trained by it against the same K cells one by one.

For each K, K cells of the default grid (spread over its optimizers) train `--steps` steps with the vmap
engine (train_batch, set-up included) and with the sequential engine (train.train), alternately in one
process, `--rounds` times; the figure is the median ratio of their CPU times (the process's own CPU time, which
time-sharing with other work on a shared machine does not inflate as it does wall time). batching.MIN_BATCH_CELLS is the
smallest K from which the vmap engine is faster (docs/performance.md).

Usage: python benchmarks/crossover.py [--cells 1,2,3,4,6,9] [--steps 30] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

from tinytrain.engines.batched import train_batch
from tinytrain.engines.sequential import configure_runtime, train
from tinytrain.spec import default_experiment_path, load_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="1,2,3,4,6,9")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    configure_runtime(1, False)
    grid = load_experiment(default_experiment_path(), [f"steps={args.steps}", "engine=vmap"]).specs()
    ratios: dict[int, list[float]] = {int(k): [] for k in args.cells.split(",")}
    for _ in range(args.rounds):
        for count in ratios:
            cells = [grid[(index * 19) % len(grid)] for index in range(count)]  # a mix of optimizers
            started = time.process_time()
            list(train_batch(cells))
            batched = time.process_time() - started
            started = time.process_time()
            for spec in cells:
                train(replace(spec, engine="sequential"))
            ratios[count].append((time.process_time() - started) / batched)
    print(f"| cells | sequential CPU time / vmap CPU time ({args.steps} steps, median of {args.rounds} rounds) |")
    print("| ---: | ---: |")
    for count, values in ratios.items():
        print(f"| {count} | {statistics.median(values):.2f} (rounds {', '.join(f'{v:.2f}' for v in values)}) |")


if __name__ == "__main__":
    main()
