"""`make bench SCALE=1`: sweeps of thousands of runs against the plain loop, each goal measured and judged.

Two experiments, each in the role its goals name: the many short runs (--experiment-10k, default
experiments/scale-10k.toml: 10,000 runs x 10 steps) and the long ones (--experiment-1k, default
experiments/scale-1k.toml: 1,000 runs x 100 steps). For each, --repeat-10k or --repeat-1k rounds of whole
processes, the order turned round from one round to the next:

  (b)       benchmarks/plain_training.py FILE: the same cells in a plain torch loop (sequential), no tracking
  VARIANT   tinytrain sweep FILE --set engine=E --set record=R --set writers=N into a fresh SQLite store,
            for each variant E-R-wN of --variant (default: DEFAULT_VARIANTS of the experiment)

then, on the store of the first variant's last round: `tinytrain compare`, `tinytrain plot` and `tinytrain sweep
--dry-run`, whole processes, median of --reads. Per variant and round it prints the wall time, a/b, the CPU
of the sweep's writer processes summed (each writer appends its own usage to TINYTRAIN_WRITER_USAGE as it
stops, tracking/background.py; where one wrote none, the figures sampled from /proc: bench.writers_usage), the
peak RSS of the main process and of the largest writer, and the artifacts a run. At the end: a table of every
variant, and one line per goal (goals()): measured, goal, met or not.

Usage: python benchmarks/scale.py [--only 10k|1k] [--repeat-10k 1] [--repeat-1k 2] [--variant vmap-none-w2 ...]
       [--experiment-10k FILE] [--experiment-1k FILE] [--reads 3 | --no-reads]
A variant is ENGINE-RECORD-wN: engine sequential|vmap, record model|weights|none, N writers (any of the 12).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BIN, ROOT, run, writers_usage  # noqa: E402

from tinytrain.spec.settings import DEFAULTS, ENGINES, RECORDS  # noqa: E402

# Enough to answer every goal without the full engine x record x writers matrix (12 sweeps an experiment): the
# batched engine at the default record (first: its store is the one read) and at the lightest, the lightest also
# with a second writer, and the sequential engine at the default record (the sweep as it ran before the batched
# engine and the record policies); `weights` on the 1,000-run sweep only, where a sweep takes a minute, not eight.
DEFAULT_VARIANTS = {
    "10k": ("vmap-model-w1", "vmap-none-w1", "vmap-none-w2", "sequential-model-w1"),
    "1k": ("vmap-model-w1", "vmap-none-w1", "vmap-none-w2", "vmap-weights-w1", "sequential-model-w1"),
}


@dataclass(frozen=True)
class Variant:
    """One sweep configuration: the `engine`, `record` and `writers` settings."""

    engine: str
    record: str
    writers: int

    @property
    def name(self) -> str:
        return f"{self.engine}-{self.record}-w{self.writers}"

    @property
    def sets(self) -> list[str]:
        return [part for key in ("engine", "record", "writers") for part in ("--set", f"{key}={getattr(self, key)}")]


def parse_variant(name: str) -> Variant:
    """ENGINE-RECORD-wN, e.g. vmap-none-w2; an argparse type (a clear error for anything else)."""
    parts = name.split("-")
    if (
        len(parts) != 3
        or parts[0] not in ENGINES
        or parts[1] not in RECORDS
        or not parts[2].startswith("w")
        or not parts[2][1:].isdigit()
        or int(parts[2][1:]) < 1
    ):
        raise argparse.ArgumentTypeError(
            f"variant {name!r} is not ENGINE-RECORD-wN (engine {'|'.join(ENGINES)}, record {'|'.join(RECORDS)}, "
            "N writers >= 1), e.g. vmap-none-w2"
        )
    return Variant(parts[0], parts[1], int(parts[2][1:]))


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def measure(role: str, experiment: str, repeat: int, variants: list[Variant], scratch: Path, reads: int) -> dict:
    """`repeat` rounds of the plain loop and every variant of one experiment, then the reads of its store."""
    from tinytrain.spec import load_experiment

    loaded = load_experiment(ROOT / experiment)
    runs = len(loaded.specs())
    rounds = []
    reads_store: Path | None = None
    print(f"{role}: {experiment}, {runs} runs, {repeat} round(s) of b and {len(variants)} variant(s)", flush=True)
    for index in range(repeat):
        print(f"  round {index + 1}/{repeat}, load {load()}", flush=True)
        measured: dict = {
            "wall": {},
            "cpu": {},
            "rss": {},
            "writer_rss": {},
            "artifacts": {},
            "written": {},
            "source": {},
        }
        order: list[Variant | None] = [None, *variants]
        for variant in order if index % 2 == 0 else order[::-1]:
            if variant is None:
                wall, rss, _ = run([str(BIN / "python"), "benchmarks/plain_training.py", experiment], ROOT)
                measured["b"], measured["rss_b"] = wall, rss
                print(f"    (b) plain loop {wall:.1f} s, peak RSS {rss:.0f} MiB", flush=True)
                continue
            name = variant.name
            store = scratch / f"{role}-{name}-{index}" / "mlflow.db"
            usage_file = scratch / f"{role}-{name}-{index}.usage"
            command = [str(BIN / "tinytrain"), "sweep", experiment, "--quiet", *variant.sets]
            spawned: dict[int, dict] = {}
            environment = {"TINYTRAIN_WRITER_USAGE": str(usage_file)}
            wall, rss, _ = run([*command, "--tracking-uri", str(store)], ROOT, environment, spawned)
            usage = writers_usage(usage_file, variant.writers, spawned)
            if len(spawned) != variant.writers:
                print(f"    {name}: {len(spawned)} writer processes seen, not {variant.writers}", flush=True)
            measured["wall"][name], measured["rss"][name] = wall, rss
            measured["cpu"][name], measured["writer_rss"][name] = usage["cpu"], usage["max_rss_mib"]
            measured["written"][name] = usage["runs_written"]
            measured["artifacts"][name] = folder_bytes(store.parent / "artifacts") / runs
            if variant == variants[0]:  # the reads' store: the last round's
                if reads_store is not None:
                    shutil.rmtree(reads_store.parent)
                reads_store = store
            else:  # the other stores' gigabytes go at once
                shutil.rmtree(store.parent)
            measured["source"][name] = usage["source"]
            written = "+".join(map(str, usage["runs_written"]))
            if usage["sampled_cpu"] is not None and usage["source"] == "reported":
                usage["source"] += f", sampled {usage['sampled_cpu'] / runs * 1000:.1f}"
            print(
                f"    {name}: {wall:.1f} s, writers {usage['cpu'] / runs * 1000:.1f} ms CPU a run ({usage['source']}; "
                f"runs written {written}), peak RSS {rss:.0f} MiB main, {usage['max_rss_mib']:.0f} MiB writer, "
                f"{measured['artifacts'][name] / 1000:.1f} KB a run",
                flush=True,
            )
        measured["load"] = load()
        rounds.append(measured)
        print(
            "    a/b: " + ", ".join(f"{v.name} {measured['wall'][v.name] / measured['b']:.3f}" for v in variants),
            flush=True,
        )
    timed: dict[str, float] = {}
    for read, command in (
        ("compare", ["compare", "--experiment", loaded.name]),
        ("plot", ["plot", "--experiment", loaded.name, "--out", str(scratch / f"{role}-curves.png")]),
        ("dry-run", ["sweep", experiment, "--dry-run"]),
    ):
        if reads:
            command = [str(BIN / "tinytrain"), *command, "--tracking-uri", str(reads_store)]
            timed[read] = statistics.median(run(command, ROOT)[0] for _ in range(reads))
    shutil.rmtree(reads_store.parent)
    if timed:
        print(f"  reads on {variants[0].name}'s store: " + ", ".join(f"{k} {v:.2f} s" for k, v in timed.items()))
    return {
        "role": role,
        "experiment": experiment,
        "runs": runs,
        "variants": variants,
        "rounds": rounds,
        "reads": timed,
    }


def summary(result: dict) -> dict[str, dict]:
    """Per variant of one experiment: medians over rounds, a/b by round, the largest peak RSS."""
    rounds, runs = result["rounds"], result["runs"]
    table = {}
    for variant in result["variants"]:
        name = variant.name
        table[name] = {
            "variant": variant,
            "wall": statistics.median(r["wall"][name] for r in rounds),
            "b": statistics.median(r["b"] for r in rounds),
            "ratios": [r["wall"][name] / r["b"] for r in rounds],
            "ratio": statistics.median(r["wall"][name] / r["b"] for r in rounds),
            "writer_ms": statistics.median(r["cpu"][name] for r in rounds) / runs * 1000,
            "rss": max(r["rss"][name] for r in rounds),
            "writer_rss": max(r["writer_rss"][name] for r in rounds),
            "rss_b": max(r["rss_b"] for r in rounds),
            "artifacts_run": statistics.median(r["artifacts"][name] for r in rounds),
            "artifacts": statistics.median(r["artifacts"][name] for r in rounds) * runs,
        }
    return table


def best(table: dict[str, dict], engine: str, record: str) -> dict | None:
    """The variant of `engine` and `record` (any number of writers) with the lowest median a/b."""
    found = [row for row in table.values() if row["variant"].engine == engine and row["variant"].record == record]
    return min(found, key=lambda row: row["ratio"]) if found else None


def goals(results: dict[str, dict]) -> list[tuple[str, str, str, bool | None]]:
    """Each goal: (what, measured, goal, met: True, False, or None when not measured)."""
    tables = {role: summary(result) for role, result in results.items()}
    lines: list[tuple[str, str, str, bool | None]] = []
    default_record = DEFAULTS["record"]

    def ratio(role: str, record: str, limit: float, what: str) -> None:
        row = best(tables[role], "vmap", record) if role in tables else None
        if row is None:
            lines.append((what, f"not measured (no vmap-{record} variant)", f"<= {limit}", None))
        else:
            measured = (
                f"{row['ratio']:.2f} ({row['variant'].name}; rounds {', '.join(f'{r:.2f}' for r in row['ratios'])})"
            )
            lines.append((what, measured, f"<= {limit}", row["ratio"] <= limit))

    ratio("10k", "none", 1.2, "10k x 10, batched engine, lightest record (none): sweep / plain loop")
    ratio(
        "10k", default_record, 1.6, f"10k x 10, batched engine, default record ({default_record}): sweep / plain loop"
    )
    ratio("1k", default_record, 0.9, f"1k x 100, batched engine, default record ({default_record}): sweep / plain loop")
    light = best(tables["10k"], "vmap", "none") if "10k" in tables else None
    if light is None:
        lines.append(("10k x 10, lightest record: artifacts of the sweep", "not measured", "<= 100 MB", None))
    else:
        megabytes = light["artifacts"] / 1e6
        lines.append(
            ("10k x 10, lightest record: artifacts of the sweep", f"{megabytes:.1f} MB", "<= 100 MB", megabytes <= 100)
        )
    if "10k" in tables and "1k" in tables:
        common = [name for name in tables["10k"] if name in tables["1k"]]
        growth = [
            (max(tables["10k"][name][key] / tables["1k"][name][key] for key in ("rss", "writer_rss")), name)
            for name in common
        ]
        if growth:
            worst, name = max(growth)
            lines.append(
                (
                    "memory flat: peak RSS of 10k x 10 over 1k x 100 (same model-steps), main or writer, worst variant",
                    f"{worst:.2f} ({name})",
                    "<= 1.2",
                    worst <= 1.2,
                )
            )
    else:
        lines.append(("memory flat: peak RSS of 10k x 10 over 1k x 100", "not measured (needs both)", "<= 1.2", None))
    for read in ("compare", "plot"):
        seconds = results["10k"]["reads"].get(read) if "10k" in results else None
        measured = "not measured" if seconds is None else f"{seconds:.2f} s"
        met = None if seconds is None else seconds <= 3.0
        lines.append((f"10k x 10: tinytrain {read}, whole process (median)", measured, "<= 3 s", met))
    return lines


def report(results: dict[str, dict]) -> None:
    print(
        "\n| experiment | variant | runs | sweep wall (s) | plain loop (s) | a/b (median) | a/b by round | "
        "writers' CPU a run | peak RSS main / writer / plain | artifacts a run | artifacts of the sweep |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: |")
    for result in results.values():
        for name, row in summary(result).items():
            print(
                f"| {result['role']} {Path(result['experiment']).name} | {name} | {result['runs']} | {row['wall']:.1f} "
                f"| {row['b']:.1f} | {row['ratio']:.3f} | {', '.join(f'{r:.3f}' for r in row['ratios'])} "
                f"| {row['writer_ms']:.1f} ms | {row['rss']:.0f} / {row['writer_rss']:.0f} / {row['rss_b']:.0f} MiB "
                f"| {row['artifacts_run'] / 1000:.1f} KB | {row['artifacts'] / 1e6:.1f} MB |"
            )
    for result in results.values():
        reads = result["reads"]
        if reads:
            print(
                f"reads of {result['role']} ({result['variants'][0].name}'s store, median of runs): "
                + ", ".join(f"{key} {value:.2f} s" for key, value in reads.items())
            )
    print("\n| goal | measured | goal | met |\n| --- | --- | --- | --- |")
    for what, measured, goal, met in goals(results):
        print(f"| {what} | {measured} | {goal} | {'-' if met is None else 'yes' if met else 'NO'} |")
    print(f"\nload average at the end: {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment-10k", default="experiments/scale-10k.toml", help="the many short runs")
    parser.add_argument("--experiment-1k", default="experiments/scale-1k.toml", help="the long runs")
    parser.add_argument("--only", choices=["10k", "1k"], default=None, help="measure one experiment only")
    parser.add_argument("--repeat-10k", type=int, default=1)
    parser.add_argument("--repeat-1k", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=None, help="rounds of both experiments (overrides the two)")
    parser.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        default=None,
        help="ENGINE-RECORD-wN, for both experiments (repeat; default: "
        + "; ".join(f"{role}: {' '.join(names)}" for role, names in DEFAULT_VARIANTS.items())
        + ")",
    )
    parser.add_argument("--reads", type=int, default=3, help="runs of compare, plot and --dry-run (median)")
    parser.add_argument("--no-reads", action="store_true", help="leave out compare, plot and --dry-run")
    args = parser.parse_args()
    chosen = list(dict.fromkeys(args.variant or []))
    experiments = {
        role: (str(Path(path).resolve()), repeat)
        for role, path, repeat in (
            ("10k", args.experiment_10k, args.repeat_10k),
            ("1k", args.experiment_1k, args.repeat_1k),
        )
    }
    scratch = Path(tempfile.mkdtemp(prefix="tinytrain-scale-"))
    # Every sweep measures what every store but a machine's first costs: a copy of the cached template.
    from tinytrain.tracking import create_store_from_template, resolve_tracking_uri

    create_store_from_template(resolve_tracking_uri(str(scratch / "warm-up" / "mlflow.db")))
    print(f"{os.cpu_count()} cores, load average {load()}; scratch {scratch}", flush=True)
    results = {
        role: measure(
            role,
            experiment,
            args.repeat or repeat,
            chosen or [parse_variant(name) for name in DEFAULT_VARIANTS[role]],
            scratch,
            0 if args.no_reads else args.reads,
        )
        for role, (experiment, repeat) in experiments.items()
        if args.only in (None, role)
    }
    shutil.rmtree(scratch)
    report(results)


if __name__ == "__main__":
    main()
