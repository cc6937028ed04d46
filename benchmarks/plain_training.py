"""Reference (b): the grid's training in plain torch, with no tracking at all (what tinytrain must approach).

Usage: python benchmarks/plain_training.py [EXPERIMENT.toml] [--engine sequential|vmap]
"""

import sys
import time

started = time.perf_counter()

from tinytrain.spec import default_experiment_path, load_experiment  # noqa: E402


def main() -> None:
    args = sys.argv[1:]
    engine = "sequential"
    if "--engine" in args:
        position = args.index("--engine")
        engine = args[position + 1]
        del args[position:position + 2]
    experiment = load_experiment(args[0] if args else default_experiment_path(), [f"engine={engine}"])
    specs = experiment.specs()
    training_started = time.perf_counter()
    if engine == "vmap":
        from tinytrain.vmap import train_batch

        results = train_batch(specs)
    else:
        from tinytrain.train import train

        results = [train(spec) for spec in specs]
    training = time.perf_counter() - training_started
    model_steps = sum(len(result.losses) - 1 for result in results)
    print(f"training_seconds={training:.4f} model_steps={model_steps} wall_seconds={time.perf_counter() - started:.4f}")


if __name__ == "__main__":
    main()
