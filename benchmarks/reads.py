"""Reading a sweep back, whole processes: `tinytrain compare` and `tinytrain plot` of a stored sweep, and the summary
a sweep writes at its end (its compare tables, its figure and its cell summary runs), side by side for two copies
of the code.

For each of `--repeat` rounds, for each code (this checkout, then each `--code DIR`: a folder holding another
`tinytrain` package, for example `git archive COMMIT | tar -x -C DIR`), in an order that turns round from one
round to the next: `tinytrain compare` and `tinytrain plot --out` of the experiment's latest sweep in a fresh
process each (wall and CPU), then, with `--summary`, one fresh process that imports what a sweep's summary
imports (`SweepSummaryMaker.warm_up`), reads the sweep with its curves and times `write_sweep_summary` and
`cell_summary_runs` on it (process time; nothing is logged to the store). It prints the median of each figure per
code, checks that every code printed the same compare table and wrote a figure with the same pixels, and prints
the load average. Nothing is written to the store.

Usage: python benchmarks/reads.py --tracking-uri STORE.db --experiment NAME [--repeat 3] [--summary]
           [--code DIR ...] [--without-checkout]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The summary's pieces, timed in a process of their own (a sweep pays them at its end, in its own process).
SUMMARY = """
import json, sys, tempfile, time
from pathlib import Path
clock = time.process_time
start = clock()
from tinytrain.reports.summary import SweepSummaryMaker, cell_summary_runs, write_sweep_summary
SweepSummaryMaker().warm_up()
imports = clock() - start
from tinytrain.tracking.sweep_records import read_sweep
record = read_sweep(sys.argv[1], sys.argv[2], with_losses=True)
start = clock()
with tempfile.TemporaryDirectory() as folder:
    write_sweep_summary(record, Path(folder))
    files = clock() - start
    start = clock()
    cell_summary_runs(record)
    cells = clock() - start
print(json.dumps({"summary imports": imports, "summary files": files, "summary cell runs": cells}))
"""


def whole_process(code: Path, args: list[str], env: dict[str, str], folder: str) -> tuple[float, float, bytes]:
    """(wall s, CPU s, stdout) of `tinytrain ARGS` run from the code in `code` (in `folder`: `python -c` puts the
    current folder first on the path, where a checkout would shadow `code`)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    command = [sys.executable, "-c", "from tinytrain.cli import main; main()", *args]
    done = subprocess.run(command, env={**env, "PYTHONPATH": str(code)}, cwd=folder, capture_output=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed from {code}:\n{done.stderr.decode()}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, done.stdout


def pixels(path: Path) -> str:
    from PIL import Image

    return hashlib.sha256(Image.open(path).tobytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--summary", action="store_true", help="also time the summary a sweep writes at its end")
    parser.add_argument("--code", type=Path, action="append", default=[], help="another copy of the code")
    parser.add_argument("--without-checkout", action="store_true", help="only the --code copies, not this checkout")
    args = parser.parse_args()
    if "://" not in args.tracking_uri:
        args.tracking_uri = str(Path(args.tracking_uri).resolve())

    codes = ([] if args.without_checkout else [ROOT]) + [path.resolve() for path in args.code]
    # as in a pipe: the table laid out without a terminal's width
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "COLUMNS")}
    figures: dict[Path, dict[str, list[float]]] = {code: {} for code in codes}
    outputs: dict[str, set[str]] = {"compare": set(), "plot": set()}
    print(f"load average before: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as scratch:
        for code in codes:  # each copy imports its own package, not the installed one
            where = subprocess.run(
                [sys.executable, "-c", "import tinytrain; print(tinytrain.__file__)"],
                env={**env, "PYTHONPATH": str(code)},
                cwd=scratch,
                capture_output=True,
                check=True,
            )
            if not where.stdout.decode().strip().startswith(str(code)):
                raise SystemExit(f"{code} does not hold the tinytrain that runs: {where.stdout.decode().strip()}")
        for round_ in range(args.repeat):
            for code in codes[round_ % len(codes) :] + codes[: round_ % len(codes)]:
                out = Path(scratch) / f"curves-{codes.index(code)}.png"
                reads = {
                    "compare": ["compare", "--experiment", args.experiment, "--tracking-uri", args.tracking_uri],
                    "plot": ["plot", "--experiment", args.experiment, "--out", str(out)]
                    + ["--tracking-uri", args.tracking_uri],
                }
                for name, command in reads.items():
                    wall, cpu, stdout = whole_process(code, command, env, scratch)
                    figures[code].setdefault(f"{name} wall", []).append(wall)
                    figures[code].setdefault(f"{name} CPU", []).append(cpu)
                    outputs[name].add(hashlib.sha256(stdout).hexdigest() if name == "compare" else pixels(out))
                if args.summary:
                    uri, name = args.tracking_uri, args.experiment
                    done = subprocess.run(
                        [sys.executable, "-c", SUMMARY, uri, name],
                        env={**env, "PYTHONPATH": str(code)},
                        cwd=scratch,
                        capture_output=True,
                        check=True,
                    )
                    for key, value in json.loads(done.stdout.decode().splitlines()[-1]).items():
                        figures[code].setdefault(key, []).append(value)
    print(f"load average after: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    print(f"median of {args.repeat}, seconds (CPU: user + system of the process)")
    names = list(figures[codes[0]])
    print("| | " + " | ".join(str(code) for code in codes) + " |")
    print("| --- |" + " ---: |" * len(codes))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{statistics.median(figures[code][name]):.2f}" for code in codes) + " |")
    same = {name: len(hashes) == 1 for name, hashes in outputs.items()}
    print(f"same compare table from every code: {same['compare']}; same figure pixels: {same['plot']}")


if __name__ == "__main__":
    main()
