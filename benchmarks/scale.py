"""`make bench SCALE=1`: sweeps of thousands of runs, measured side by side against the plain loop.

For each experiment given (default: experiments/scale-1k.toml, 1,000 runs x 100 steps), `--repeat` rounds of
whole processes, in an order that turns round from one round to the next:

  (a) tinytrain sweep FILE --set record=R into a fresh SQLite store, for each record policy R of --record
      (default: each of model, weights and none; docs/records.md)
  (b) benchmarks/plain_training.py FILE (the same cells in a plain torch loop, no tracking)

then, on the last store of the first policy's (a): `tinytrain compare`, `tinytrain plot` and `tinytrain sweep
--dry-run`, whole processes. It prints, for each policy, wall times, a/b round by round, the CPU of the writer
process per run (the writer reports its own usage, see tracking/background.py), peak RSS, the artifacts per run
and the load average.

Usage: python benchmarks/scale.py [--repeat 2] [--experiment experiments/scale-10k.toml ...] [--record none ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BIN, ROOT, run  # noqa: E402

from tinytrain.spec.settings import RECORDS  # noqa: E402


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def measure(experiment: str, repeat: int, records: list[str], reads: bool = True) -> dict:
    from tinytrain.spec import load_experiment

    runs = len(load_experiment(ROOT / experiment).specs())
    rounds = []
    scratch = Path(tempfile.mkdtemp(prefix="tinytrain-scale-"))
    stores: dict[str, Path] = {}
    for index in range(repeat):
        print(f"  round {index + 1}/{repeat} of {experiment}, load {load()}", flush=True)
        times: dict = {"a": {}, "writer_cpu": {}, "rss": {}, "artifacts": {}}
        variants = ["b", *records]
        for variant in variants if index % 2 == 0 else variants[::-1]:
            if variant == "b":
                wall, rss_b, _out = run([str(BIN / "python"), "benchmarks/plain_training.py", experiment], ROOT)
                times["b"], times["rss_b"] = wall, rss_b
                continue
            store = stores[variant] = scratch / f"{variant}{index}" / "mlflow.db"
            usage = scratch / f"{variant}{index}.usage"
            os.environ["TINYTRAIN_WRITER_USAGE"] = str(usage)
            command = ["sweep", experiment, "--quiet", "--set", f"record={variant}", "--tracking-uri", str(store)]
            wall, rss, _ = run([str(BIN / "tinytrain"), *command], ROOT)
            del os.environ["TINYTRAIN_WRITER_USAGE"]
            writer = json.loads(usage.read_text().splitlines()[-1])
            times["a"][variant] = wall
            times["writer_cpu"][variant] = writer["user"] + writer["system"]
            times["rss"][variant] = max(rss, writer["max_rss_mib"])
            times["artifacts"][variant] = folder_bytes(store.parent / "artifacts") / runs
        times["load"] = load()
        rounds.append(times)
        for record in records:
            print(
                f"    record={record}: a {times['a'][record]:.1f} s, b {times['b']:.1f} s, "
                f"a/b {times['a'][record] / times['b']:.3f}, writer "
                f"{times['writer_cpu'][record] / runs * 1000:.1f} ms CPU a run, "
                f"{times['artifacts'][record] / 1000:.1f} KB of artifacts a run, peak RSS a "
                f"{times['rss'][record]:.0f} MiB, load {times['load']}",
                flush=True,
            )
    timed_reads = {}
    name = load_experiment(ROOT / experiment).name
    for read, command in (
        ("compare", ["compare", "--experiment", name]),
        ("plot", ["plot", "--experiment", name, "--out", str(scratch / "curves.png")]),
        ("dry-run", ["sweep", experiment, "--dry-run"]),
    ):
        if reads:
            store = stores[records[0]]
            walls = [run([str(BIN / "tinytrain"), *command, "--tracking-uri", str(store)], ROOT)[0] for _ in range(3)]
            timed_reads[read] = statistics.median(walls)
        else:
            timed_reads[read] = float("nan")
    return {
        "experiment": experiment,
        "runs": runs,
        "records": records,
        "rounds": rounds,
        "reads": timed_reads,
        "database_bytes": stores[records[0]].stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--experiment", action="append", default=None)
    parser.add_argument("--record", action="append", choices=RECORDS, default=None, help="a record policy (repeat)")
    parser.add_argument("--no-reads", action="store_true", help="leave out compare, plot and --dry-run")
    args = parser.parse_args()
    records = args.record or list(RECORDS)
    results = [
        measure(experiment, args.repeat, records, not args.no_reads)
        for experiment in args.experiment or ["experiments/scale-1k.toml"]
    ]
    print()
    print(
        "| experiment | record | runs | (a) sweep wall (s) | (b) plain loop (s) | a/b by round | writer CPU a run | "
        "peak RSS (a) | artifacts a run | artifacts of the sweep | compare | plot | dry-run |"
    )
    print("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for result in results:
        rounds, runs, reads = result["rounds"], result["runs"], result["reads"]
        for index, record in enumerate(result["records"]):
            ratios = ", ".join(f"{r['a'][record] / r['b']:.3f}" for r in rounds)
            writer = statistics.median(r["writer_cpu"][record] for r in rounds) / runs * 1000
            artifacts = statistics.median(r["artifacts"][record] for r in rounds)
            timed = (
                f"{reads['compare']:.2f} s | {reads['plot']:.2f} s | {reads['dry-run']:.2f} s" if index == 0 else "| |"
            )
            wall = statistics.median(r["a"][record] for r in rounds)
            print(
                f"| {result['experiment']} | {record} | {runs} | {wall:.1f} "
                f"| {statistics.median(r['b'] for r in rounds):.1f} | {ratios} | {writer:.1f} ms | "
                f"{max(r['rss'][record] for r in rounds):.0f} MiB | {artifacts / 1000:.1f} KB | "
                f"{artifacts * runs / 1e6:.0f} MB | {timed} |"
            )
    print(f"\nload average at the end: {load()}")


if __name__ == "__main__":
    main()
