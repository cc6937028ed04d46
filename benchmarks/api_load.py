"""`make bench`: loading a 1,000-run sweep with every loss curve into pandas, the Python API against MLflow's own route.

A sweep of experiments/scale-1k.toml (5 optimizers x 20 learning rates x 10 seeds) with few steps (default 10,
so that making it takes a minute or two) is written once into a temporary SQLite store by `tinytrain sweep`.
Then, alternately, `--repeat` times, each in a fresh process:

  (a) the API       tinytrain.open_store(uri).sweep(name): runs() and curves() (plain-SQL reads)
  (b) MLflow        MlflowClient.search_runs (every page) and one get_metric_history a run, into the same
                    two DataFrames (runs with their params and metrics; curves as run_id, step, metric, value)

Each process imports its libraries first (pandas, tinytrain's readers; mlflow) and times only the load; the
whole process's wall time (imports included) is printed beside it. The target: (a) at most 1 s for 1,000 runs.

Usage: python benchmarks/api_load.py [--repeat 3] [--steps 10] [--experiment experiments/scale-1k.toml]
       [--store DIR]   (reuse a store made by an earlier run of this script)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BIN, ROOT, field, run  # noqa: E402


def measure_api(uri: str, name: str) -> None:
    import pandas  # noqa: F401 - imported before the timer, as a notebook has it after its first cell

    import tinytrain
    import tinytrain.api  # noqa: F401 - what the first call loads lazily, also before the timer
    import tinytrain.tracking.sweep_records  # noqa: F401

    started = time.perf_counter()
    sweep = tinytrain.open_store(uri).sweep(name)
    runs, curves = sweep.runs(), sweep.curves()
    seconds = time.perf_counter() - started
    print(f"seconds={seconds:.4f} runs={len(runs)} points={len(curves)}")


def measure_mlflow(uri: str, name: str) -> None:
    import mlflow
    import pandas as pd

    started = time.perf_counter()
    client = mlflow.MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(name).experiment_id
    found, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], "tags.`tinytrain.kind` = 'run' and attributes.status = 'FINISHED'", page_token=token
        )
        found.extend(page)
        token = page.token
        if not token:
            break
    runs = pd.DataFrame(
        [
            {
                "run_id": item.info.run_id,
                "run_key": item.data.tags.get("tinytrain.run_key"),
                "outcome": item.data.tags.get("tinytrain.outcome"),
                **{f"params.{key}": value for key, value in item.data.params.items()},
                **{f"metrics.{key}": value for key, value in item.data.metrics.items()},
            }
            for item in found
        ]
    )
    points = [
        (item.info.run_id, metric.step, "loss", metric.value)
        for item in found
        for metric in sorted(client.get_metric_history(item.info.run_id, "loss"), key=lambda metric: metric.step)
    ]
    curves = pd.DataFrame(points, columns=["run_id", "step", "metric", "value"])
    seconds = time.perf_counter() - started
    print(f"seconds={seconds:.4f} runs={len(runs)} points={len(curves)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--experiment", default="experiments/scale-1k.toml")
    parser.add_argument("--store", default=None, help="a folder holding (or to hold) the store, kept afterwards")
    parser.add_argument("--measure", choices=("api", "mlflow"), help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        (measure_api if args.measure == "api" else measure_mlflow)(args.uri, args.name)
        return

    from tinytrain.spec import load_experiment

    name = load_experiment(ROOT / args.experiment).name
    with tempfile.TemporaryDirectory(prefix="tinytrain-api-bench-") as scratch:
        folder = Path(args.store or scratch)
        uri = f"sqlite:///{folder.resolve() / 'mlflow.db'}"
        if not (folder / "mlflow.db").exists():
            command = [str(BIN / "tinytrain"), "sweep", str(ROOT / args.experiment), "--quiet"]
            command += ["--set", f"steps={args.steps}", "--tracking-uri", uri]
            wall, _rss, _out = run(command, cwd=Path(scratch), env={"XDG_CACHE_HOME": str(Path(scratch) / "cache")})
            print(f"made the sweep: {args.experiment} at steps={args.steps} in {wall:.1f} s ({uri})")
        figures: dict[str, list[tuple[float, float]]] = {"api": [], "mlflow": []}
        counts = {}
        for round_ in range(args.repeat):
            for variant in ("api", "mlflow") if round_ % 2 == 0 else ("mlflow", "api"):
                script = [sys.executable, __file__, "--measure", variant, "--uri", uri, "--name", name]
                wall, _rss, out = run(script, cwd=ROOT)
                figures[variant].append((field(out, "seconds"), wall))
                counts[variant] = (int(field(out, "runs")), int(field(out, "points")))
        print(
            f"\nLoading {counts['api'][0]} runs and {counts['api'][1]} loss points into pandas "
            f"(median of {args.repeat}):"
        )
        print(f"{'':28} {'load s':>8} {'process s':>10}   runs  points")
        for variant, label in (("api", "(a) tinytrain API"), ("mlflow", "(b) MLflow's own route")):
            load = statistics.median(seconds for seconds, _wall in figures[variant])
            wall = statistics.median(wall for _seconds, wall in figures[variant])
            print(f"{label:28} {load:8.3f} {wall:10.2f}   {counts[variant][0]:4d}  {counts[variant][1]:6d}")
        ratios = [mlflow / api for (api, _), (mlflow, _) in zip(figures["api"], figures["mlflow"], strict=True)]
        print(f"MLflow's route / the API, round by round: {', '.join(f'{ratio:.1f}x' for ratio in ratios)}")
        if counts["api"] != counts["mlflow"]:
            raise SystemExit(f"the two routes read different data: {counts}")


if __name__ == "__main__":
    main()
