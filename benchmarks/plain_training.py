"""Reference (b): the grid's training in plain torch, with no tracking at all (what tinytrain must approach).

Usage: python benchmarks/plain_training.py [EXPERIMENT.toml] [--engine sequential|vmap] [--jobs N]
       [--runtime THREADS,MKLDNN] [--set KEY=V1,V2 ...]

With --jobs N the vmap engine's cells are split into N batches trained at once by N worker processes (as
`tinytrain sweep --engine vmap --jobs N` does); the training time then includes starting the workers.
The training time starts once torch and both engines are imported (in the wall time, not in it).
--runtime 2,1 trains with 2 torch threads and oneDNN on, which tinytrain does not accept for the vmap engine
(a cell's bits then depend on its batch): it is here to measure what that setting would give.
"""

import argparse
import time

started = time.perf_counter()

from tinytrain.spec import default_experiment_path, load_experiment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", default=str(default_experiment_path()))
    parser.add_argument("--engine", choices=["sequential", "vmap"], default="sequential")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--runtime", metavar="THREADS,MKLDNN", default=None)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="override the experiment as `tinytrain sweep --set` does",
    )
    args = parser.parse_args()
    engine, jobs = args.engine, args.jobs
    runtime = None
    if args.runtime:
        threads, mkldnn = args.runtime.split(",")
        runtime = {"threads": int(threads), "mkldnn": mkldnn == "1"}
    experiment = load_experiment(args.experiment, [*args.overrides, f"engine={engine}"])
    specs = experiment.specs()
    if runtime:
        import dataclasses

        specs = [dataclasses.replace(spec, **runtime) for spec in specs]
    # torch and both engines imported first, the same for each: importing torch (about a second) is not
    # training, and would hide the engines' difference in the training time (it stays in the wall time)
    import tinytrain.engines.batched  # noqa: F401
    import tinytrain.engines.sequential  # noqa: F401

    training_started, cpu_started = time.perf_counter(), time.process_time()
    if engine == "vmap" and jobs > 1:
        from tinytrain.executors import ProcessPool

        pool = ProcessPool(jobs)
        results = list(pool.run(specs, lambda spec: None))
        pool.close()
    elif engine == "vmap":
        from tinytrain.executors import InProcess

        results = list(InProcess().run(specs, lambda spec: None))  # the sweep's sub-batches and fallback
    else:
        from tinytrain.engines.sequential import train

        results = [train(spec) for spec in specs]
    training, cpu = time.perf_counter() - training_started, time.process_time() - cpu_started
    model_steps = sum(len(result.losses) - 1 for result in results)
    print(
        f"training_seconds={training:.4f} training_cpu_seconds={cpu:.4f} model_steps={model_steps} "
        f"wall_seconds={time.perf_counter() - started:.4f}"
    )


if __name__ == "__main__":
    main()
