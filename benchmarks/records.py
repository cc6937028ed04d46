"""What each record policy costs the writer, alone: `Store.finish_run` of the same trained runs, per policy.

Trains `--runs` runs of experiments/scale-1k.toml's grid once (100 steps each, in this process), then, `--repeat`
rounds, for each record policy in an order that turns round from one round to the next: a fresh SQLite store, and
every run written as a sweep's writer writes it (start_run, then finish_run with the weights as the bytes the
training process hands over; for weights, the models of the cells' median seeds as the sweep closes). It prints
the writer's CPU a run (process time), its wall a run and the artifacts a run, per policy, and the load average.

Usage: python benchmarks/records.py [--runs 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT  # noqa: E402

from tinytrain.spec.settings import RECORDS  # noqa: E402


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from tinytrain.engines.sequential import train
    from tinytrain.spec import load_experiment
    from tinytrain.tracking.model_files import save_weights
    from tinytrain.tracking.recorder import log_cell_models
    from tinytrain.tracking.store import Store
    from tinytrain.tracking.sweep_records import sweep_record_sqlite

    experiment = load_experiment(ROOT / "experiments/scale-1k.toml")
    specs = experiment.specs()[: args.runs]  # sgd's first lrs, ten seeds each: whole cells
    results = []
    for spec in specs:
        result = train(spec)
        weights = None if result.final_weights is None else save_weights(result.final_weights)
        results.append(dataclasses.replace(result, final_weights=weights))  # as they reach the writer
    print(f"{len(results)} runs trained; load {os.getloadavg()[0]:.2f}", flush=True)
    figures: dict[str, dict[str, list[float]]] = {record: {"cpu": [], "wall": [], "bytes": []} for record in RECORDS}
    scratch = Path(tempfile.mkdtemp(prefix="tinytrain-records-"))
    for index in range(args.repeat):
        for record in RECORDS if index % 2 == 0 else RECORDS[::-1]:
            uri = f"sqlite:///{scratch / f'{record}{index}' / 'mlflow.db'}"
            recorded = load_experiment(ROOT / "experiments/scale-1k.toml", [f"record={record}"])
            with Store(uri, writer=True) as store:
                experiment_id = store.experiment_id(recorded.name)
                parent = store.start_sweep(experiment_id, recorded, len(results), {})
                cpu, wall = time.process_time(), time.perf_counter()
                for result in results:
                    spec = dataclasses.replace(result.spec, record=record)
                    run_id = store.start_run(experiment_id, parent, spec, {})
                    store.finish_run(run_id, dataclasses.replace(result, spec=spec), experiment_id)
                if record == "weights":
                    log_cell_models(store, recorded, sweep_record_sqlite(uri, parent, recorded))
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            figures[record]["cpu"].append(cpu / len(results) * 1000)
            figures[record]["wall"].append(wall / len(results) * 1000)
            figures[record]["bytes"].append(folder_bytes(scratch / f"{record}{index}" / "artifacts") / len(results))
            print(
                f"  round {index + 1}: record={record} writer {figures[record]['cpu'][-1]:.1f} ms CPU a run, "
                f"{figures[record]['wall'][-1]:.1f} ms wall a run, {figures[record]['bytes'][-1] / 1000:.1f} KB a run, "
                f"load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    print()
    print("| record | writer CPU a run (median, rounds) | writer wall a run | artifacts a run |")
    print("| --- | --- | ---: | ---: |")
    for record in RECORDS:
        cpu = figures[record]["cpu"]
        print(
            f"| {record} | {statistics.median(cpu):.1f} ms ({', '.join(f'{value:.1f}' for value in cpu)}) | "
            f"{statistics.median(figures[record]['wall']):.1f} ms | "
            f"{statistics.median(figures[record]['bytes']) / 1000:.1f} KB |"
        )
    print(f"\nload average at the end: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
