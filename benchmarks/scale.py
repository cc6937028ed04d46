"""`make bench ARGS=--scale`: sweeps of thousands of runs, measured side by side against the plain loop.

For each experiment given (default: experiments/scale-1k.toml, 1,000 runs x 100 steps), alternately, `--repeat`
times, as whole processes:

  (a) tinytrain sweep FILE into a fresh SQLite store (full tracking and checkpoints)
  (b) benchmarks/plain_training.py FILE (the same cells in a plain torch loop, no tracking)

then, on the last store of (a): `tinytrain compare`, `tinytrain plot` and `tinytrain sweep --dry-run`, whole
processes. It prints wall times, a/b round by round, the CPU of the writer process per run (the writer reports
its own usage, see tracking/background.py), peak RSS, the artifacts per run and the load average.

Usage: python benchmarks/scale.py [--repeat 2] [--experiment experiments/scale-10k.toml ...]
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


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def measure(experiment: str, repeat: int) -> dict:
    from tinytrain.spec import load_experiment

    runs = len(load_experiment(ROOT / experiment).specs())
    rounds = []
    scratch = Path(tempfile.mkdtemp(prefix="tinytrain-scale-"))
    store = None
    for index in range(repeat):
        print(f"  round {index + 1}/{repeat} of {experiment}, load {load()}", flush=True)
        times = {}
        order = ("a", "b") if index % 2 == 0 else ("b", "a")
        for variant in order:
            if variant == "a":
                store = scratch / f"a{index}" / "mlflow.db"
                usage = scratch / f"a{index}.usage"
                os.environ["TINYTRAIN_WRITER_USAGE"] = str(usage)
                wall, rss, _ = run(
                    [str(BIN / "tinytrain"), "sweep", experiment, "--quiet", "--tracking-uri", str(store)], ROOT
                )
                del os.environ["TINYTRAIN_WRITER_USAGE"]
                writer = json.loads(usage.read_text().splitlines()[-1])
                times["a"] = wall
                times["writer_cpu"] = writer["user"] + writer["system"]
                times["rss"] = max(rss, writer["max_rss_mib"])
            else:
                wall, rss_b, out = run([str(BIN / "python"), "benchmarks/plain_training.py", experiment], ROOT)
                times["b"] = wall
                times["rss_b"] = rss_b
        times["load"] = load()
        rounds.append(times)
        print(
            f"    a {times['a']:.1f} s, b {times['b']:.1f} s, a/b {times['a'] / times['b']:.3f}, writer "
            f"{times['writer_cpu'] / runs * 1000:.1f} ms CPU a run, peak RSS a {times['rss']:.0f} MiB, "
            f"load {times['load']}",
            flush=True,
        )
    reads = {}
    for name, command in (
        ("compare", ["compare", "--experiment", load_experiment(ROOT / experiment).name]),
        (
            "plot",
            ["plot", "--experiment", load_experiment(ROOT / experiment).name, "--out", str(scratch / "curves.png")],
        ),
        ("dry-run", ["sweep", experiment, "--dry-run"]),
    ):
        walls = [run([str(BIN / "tinytrain"), *command, "--tracking-uri", str(store)], ROOT)[0] for _ in range(3)]
        reads[name] = statistics.median(walls)
    artifacts = folder_bytes(store.parent / "artifacts") / runs
    return {
        "experiment": experiment,
        "runs": runs,
        "rounds": rounds,
        "reads": reads,
        "artifact_bytes_per_run": artifacts,
        "database_bytes": store.stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--experiment", action="append", default=None)
    args = parser.parse_args()
    results = [measure(experiment, args.repeat) for experiment in args.experiment or ["experiments/scale-1k.toml"]]
    print()
    print(
        "| experiment | runs | (a) sweep wall (s) | (b) plain loop (s) | a/b by round | writer CPU a run | "
        "peak RSS (a) | compare | plot | dry-run | artifacts a run |"
    )
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for result in results:
        rounds, runs = result["rounds"], result["runs"]
        ratios = ", ".join(f"{r['a'] / r['b']:.3f}" for r in rounds)
        writer = statistics.median(r["writer_cpu"] for r in rounds) / runs * 1000
        reads = result["reads"]
        print(
            f"| {result['experiment']} | {runs} | {statistics.median(r['a'] for r in rounds):.1f} | "
            f"{statistics.median(r['b'] for r in rounds):.1f} | {ratios} | {writer:.1f} ms | "
            f"{max(r['rss'] for r in rounds):.0f} MiB | {reads['compare']:.2f} s | {reads['plot']:.2f} s | "
            f"{reads['dry-run']:.2f} s | {result['artifact_bytes_per_run'] / 1000:.0f} KB |"
        )
    print(f"\nload average at the end: {load()}")


if __name__ == "__main__":
    main()
