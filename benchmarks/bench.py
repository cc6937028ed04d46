"""`make bench`: what tracking, the naive way of tracking, and the vmap engine cost, measured side by side.

Every variant runs as a whole process (imports and store set-up included, as a user pays them), in
alternating order, `--repeat` times; the figures are medians and, above all, ratios of variants measured
in the same run, because this machine is shared and noisy:

  (a) tinytrain sweep          the default grid, full tracking and checkpoints, into a fresh SQLite store
  (b) plain training           the same grid's training, no tracking (benchmarks/plain_training.py)
  (c) naive MLflow script      log_metric per step, log_model with defaults (benchmarks/naive_mlflow.py)
  (d) vmap training            the same grid trained at once by the vmap engine, no tracking
  (e) tinytrain sweep --engine vmap, full tracking
  (f) vmap training, 2 workers  the grid as sub-batches on two worker processes (--jobs 2), no tracking
  (g) tinytrain sweep, digits  experiments/digits-grid.toml (real images), full tracking and checkpoints
  (h) plain training, digits   the same digits cells trained by plain_training.py, no tracking
  (i) tinytrain sweep, recipe  the default grid under a recipe (--recipe-set: warmup then cosine), full tracking
  (j) tinytrain sweep --engine vmap, recipe   the same, on the vmap engine

Usage: python benchmarks/bench.py [--repeat 3] [--experiment FILE] [--skip-naive] [--variants abcdefgh]
       [--digits FILE] [--digits-set KEY=V ...] [--skip-digits | --digits-only] [--recipe-set KEY=V ...]

The vmap engine's figures alone, (d) and (e) against (a) and (b), without the minutes of (c), (g), (h):
  python benchmarks/bench.py --variants abde
The vmap engine under a training recipe (target: i/j >= 1.4):
  python benchmarks/bench.py --variants ij
A quick check of the digits variants on a tiny grid (seconds, not minutes):
  python benchmarks/bench.py --repeat 1 --digits-only --digits-set steps=5 --digits-set optimizer=adam,sgd
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FLOP_PER_MODEL_STEP = 2.26e6  # one forward + backward of the tutorial LeNet on one 1x32x32 input


def run(
    command: list[str], cwd: Path, env: dict[str, str] | None = None, spawned: dict[int, dict] | None = None
) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB, the largest process of its tree that it waited for) and stdout of one whole
    process. With `spawned` (a dict), its children started by multiprocessing (a sweep's writers) are sampled
    there as it runs (see sample_spawned)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=cwd, stdout=out, stderr=err, text=True, env=None if env is None else {**os.environ, **env}
        )
        ended: dict = {}

        def reap() -> None:  # the wall time ends when the process does, not at the next sample
            ended["wait"] = os.wait4(process.pid, 0)
            ended["at"] = time.perf_counter()

        if spawned is None:
            reap()
        else:
            waiter = threading.Thread(target=reap, daemon=True)
            waiter.start()
            while waiter.is_alive():
                sample_spawned(process.pid, spawned)
                waiter.join(SAMPLE_EVERY)
        _pid, status, usage = ended["wait"]
        wall = ended["at"] - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode:
            raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{err.read()[-2000:]}")
        return wall, usage.ru_maxrss / 1024, out.read()


SAMPLE_EVERY = 0.2  # seconds between samples of a sweep's writer processes
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def sample_spawned(parent: int, spawned: dict[int, dict]) -> None:
    """The CPU seconds and peak RSS (MiB) of each child of `parent` that multiprocessing spawned, from /proc
    (a child that has exited and is not yet reaped keeps its final CPU time there). What a child uses after the
    last sample is missed: at most SAMPLE_EVERY seconds of CPU each."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as file:
                fields = file.read().rsplit(b")", 1)[1].split()
            if int(fields[1]) != parent:
                continue
            pid = int(entry.name)
            if pid not in spawned:
                with open(f"/proc/{pid}/cmdline", "rb") as file:
                    if b"spawn_main" not in file.read():
                        continue
                spawned[pid] = {"cpu": 0.0, "max_rss_mib": 0.0}
            spawned[pid]["cpu"] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            with open(f"/proc/{pid}/status") as file:
                for line in file:
                    if line.startswith("VmHWM:"):
                        peak = int(line.split()[1]) / 1024
                        spawned[pid]["max_rss_mib"] = max(spawned[pid]["max_rss_mib"], peak)
        except (OSError, ValueError, IndexError):  # gone, or not ours to read
            continue


def field(stdout: str, name: str) -> float:
    return float(re.search(rf"{name}=([0-9.]+)", stdout).group(1))


def matmul_gflops() -> float:
    """A large float32 matrix product on one thread: what one core of this machine can do."""
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    times = []
    for _ in range(5):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * 1024**3 / min(times) / 1e9


def copy_bandwidth() -> float:
    """GB/s read + written by one core copying 64 MiB: what bounds work on data beyond the caches."""
    import torch

    torch.set_num_threads(1)
    source = torch.ones(16 * 2**20)
    target = torch.empty_like(source)
    times = []
    for _ in range(6):
        started = time.perf_counter()
        target.copy_(source)
        times.append(time.perf_counter() - started)
    return 2 * source.numel() * 4 / min(times[1:]) / 1e9


# Floats per model-step that a perfectly fused engine must still move once the cells' state exceeds the
# caches: the weights read by the forward and the backward, the gradient written, and the update's reads and
# writes of weights, gradient and state (sgd 3, sgd with momentum 5, adam/adamw 7, rmsprop 5), over the
# default grid's optimizers.
FUSED_FLOATS_PER_PARAMETER = 3 + (3 + 5 + 7 + 7 + 5) / 5
PARAMETERS = 61_706


NAMES = {
    "a": "tinytrain sweep (full tracking)",
    "b": "plain training, no tracking",
    "c": "naive MLflow script",
    "d": "vmap training, no tracking",
    "e": "tinytrain sweep --engine vmap (full tracking)",
    "f": "vmap training, 2 worker processes",
    "g": "tinytrain sweep, digits (full tracking)",
    "h": "plain training, digits, no tracking",
    "i": "tinytrain sweep, recipe (full tracking)",
    "j": "tinytrain sweep --engine vmap, recipe (full tracking)",
}
TRAINING = "bdfh"  # the variants that report their training time and model-steps
SWEEPS = "aegij"  # the variants with a writer process, which reports its own CPU time


def commands(
    keys: str, experiment: str, store: Path, with_naive: bool, digits: list[str], recipe: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    """The command of each chosen variant for one round, its stores under `store`; `digits` is the digits
    experiment and its --set options, `recipe` the --set options of (i) and (j)."""
    python, tinytrain = str(BIN / "python"), str(BIN / "tinytrain")
    plain = str(ROOT / "benchmarks" / "plain_training.py")
    every = {
        "a": [tinytrain, "sweep", experiment, "--quiet", "--tracking-uri", str(store / "a" / "mlflow.db")],
        "b": [python, plain, experiment],
        "c": [
            python,
            str(ROOT / "benchmarks" / "naive_mlflow.py"),
            f"sqlite:///{store / 'c' / 'mlflow.db'}",
            experiment,
        ],
        "d": [python, plain, experiment, "--engine", "vmap"],
        "e": [
            tinytrain,
            "sweep",
            experiment,
            "--quiet",
            "--engine",
            "vmap",
            "--tracking-uri",
            str(store / "e" / "mlflow.db"),
        ],
        "f": [python, plain, experiment, "--engine", "vmap", "--jobs", "2"],
        "g": [tinytrain, "sweep", *digits, "--quiet", "--tracking-uri", str(store / "g" / "mlflow.db")],
        "h": [python, plain, *digits],
        "i": [tinytrain, "sweep", experiment, *recipe, "--quiet", "--tracking-uri", str(store / "i" / "mlflow.db")],
        "j": [
            tinytrain,
            "sweep",
            experiment,
            *recipe,
            "--quiet",
            "--engine",
            "vmap",
            "--tracking-uri",
            str(store / "j" / "mlflow.db"),
        ],
    }
    if "c" in keys and with_naive:
        (store / "c").mkdir(parents=True)
    return {key: every[key] for key in keys if key != "c" or with_naive}


USAGE_WAIT = 5.0  # seconds for the writers' lines after the sweep's exit (at exit it stops the ones still alive)


def writers_usage(path: Path, writers: int, spawned: dict[int, dict] | None = None, wait: float = USAGE_WAIT) -> dict:
    """A sweep's writer processes summed: CPU seconds (user + system), the largest peak RSS (MiB), the runs each
    wrote, and where the figures come from.

    Each writer (the sweep's writer and each run writer) appends one line of its own usage to `path`
    (TINYTRAIN_WRITER_USAGE) as it stops; a writer the sweep's exit cuts short writes none. When fewer than
    `writers` lines come, the CPU and peak RSS are those sampled from /proc as the sweep ran (`spawned`, see
    run), which miss at most SAMPLE_EVERY seconds of each writer's CPU."""
    import json

    deadline = time.monotonic() + wait
    while True:
        text = path.read_text() if path.exists() else ""
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        if len(lines) >= writers or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    usage = {
        "runs_written": [line["runs_written"] for line in lines],
        "reported": len(lines),
        "sampled_cpu": sum(child["cpu"] for child in spawned.values()) if spawned else None,
    }
    if len(lines) >= writers:
        usage["cpu"] = sum(line["user"] + line["system"] for line in lines)
        usage["max_rss_mib"] = max(line["max_rss_mib"] for line in lines)
        usage["source"] = "reported"
    elif spawned:
        usage["cpu"] = sum(child["cpu"] for child in spawned.values())
        usage["max_rss_mib"] = max(child["max_rss_mib"] for child in spawned.values())
        usage["source"] = f"sampled ({len(lines)} of {writers} reported; {len(spawned)} sampled)"
    else:
        raise SystemExit(f"{len(lines)} of {writers} writers reported their usage in {path}, and none was sampled")
    return usage


def writer_cpu(usage_file: Path, spawned: dict[int, dict]) -> float:
    """The CPU seconds of every writer process of a sweep at the default `writers` (auto)."""
    from tinytrain.spec.settings import writer_count

    return writers_usage(usage_file, writer_count("auto", 1), spawned)["cpu"]


def measure(
    keys: str, experiment: str, repeat: int, skip_naive: bool, digits: list[str], recipe: tuple[str, ...] = ()
) -> tuple[dict, dict, dict, dict]:
    """Every chosen variant, `repeat` rounds in alternating order (the naive script in the first only)."""
    walls: dict[str, list[float]] = {key: [] for key in keys}
    peaks: dict[str, float] = {}
    training: dict[str, list[tuple[float, float, float]]] = {key: [] for key in keys if key in TRAINING}
    writers: dict[str, list[float]] = {key: [] for key in keys if key in SWEEPS}
    with tempfile.TemporaryDirectory(prefix="tinytrain-bench-") as scratch:
        scratch_path = Path(scratch)
        # Every round measures what every store but a machine's first costs: a copy of the cached template.
        from tinytrain.tracking import create_store_from_template, resolve_tracking_uri

        create_store_from_template(resolve_tracking_uri(str(scratch_path / "warm-up" / "mlflow.db")))
        for round_number in range(repeat):
            variants = commands(
                keys,
                experiment,
                scratch_path / f"round{round_number}",
                round_number == 0 and not skip_naive,
                digits,
                recipe,
            )
            order = list(variants) if round_number % 2 == 0 else list(reversed(variants))
            for key in order:
                usage_file = scratch_path / f"writer-{round_number}-{key}.json"
                env = {"TINYTRAIN_WRITER_USAGE": str(usage_file)} if key in writers else None
                spawned: dict[int, dict] = {}
                wall, peak, stdout = run(variants[key], scratch_path, env, spawned if key in writers else None)
                if key in writers:
                    writers[key].append(writer_cpu(usage_file, spawned))
                walls[key].append(wall)
                peaks[key] = max(peaks.get(key, 0.0), peak)
                if key in training:
                    training[key].append(
                        (
                            field(stdout, "training_seconds"),
                            field(stdout, "model_steps"),
                            field(stdout, "training_cpu_seconds"),
                        )
                    )
                print(f"  round {round_number + 1} ({key}) {wall:6.2f} s", flush=True)
    return walls, peaks, training, writers


def print_writers(walls: dict, writers: dict) -> None:
    """The writers' own CPU time in each sweep, summed over its writer processes: a sweep cannot end before its
    writers have done their work (start-up, every run, the summary), so it bounds the sweep's wall time from below."""
    for key, values in writers.items():
        if values:
            cpu, wall = statistics.median(values), statistics.median(walls[key])
            print(
                f"writers of ({key}): {cpu:.2f} s of CPU (median; {', '.join(f'{v:.2f}' for v in values)}), "
                f"{cpu / wall:.0%} of the sweep's wall time"
            )
    if writers.get("a") and writers.get("e"):
        bound = statistics.median(walls["a"]) / statistics.median(writers["e"])
        print(f"a/e can be at most {bound:.2f} with these writers: (a)'s wall time over the CPU time of (e)'s writers")


def print_ratios(walls: dict, training: dict) -> None:
    """The ratios of the variants measured; (d) and (e) against (a) and (b) are the vmap engine's figures."""
    median = {key: statistics.median(values) for key, values in walls.items() if values}

    def rounds(top: str, bottom: str) -> str:
        return ", ".join(f"{x / y:.2f}" for x, y in zip(walls[top], walls[bottom], strict=True))

    def rate(key: str, cpu: bool = False) -> float:  # model-steps per second of training (or of its CPU)
        return statistics.median(
            steps / (cpu_seconds if cpu else seconds) for seconds, steps, cpu_seconds in training[key]
        )

    print("\n| ratio | value | meaning |\n| --- | ---: | --- |")
    lines = [
        ("a", "b", "tracking's cost: whole sweep over plain training (goal <= 1.3)"),
        ("c", "a", "how far ahead of the naive MLflow script"),
        ("b", "d", "vmap engine, whole process, no tracking"),
        ("a", "e", f"whole sweep, sequential over vmap engine (goal >= {BATCHED_GOAL:g})"),
        ("b", "e", "plain sequential training over the whole vmap sweep"),
        ("e", "d", "the vmap sweep's tracking cost: whole sweep over vmap training"),
        ("b", "f", "vmap engine on 2 workers, whole process"),
        ("g", "h", "tracking's cost on digits: whole sweep over plain training (goal <= 1.3)"),
        ("i", "j", "under the recipe: whole sweep, sequential over vmap engine (target >= 1.4)"),
    ]
    for top, bottom, meaning in lines:
        if top in median and bottom in median:
            by_round = f"; round by round {rounds(top, bottom)}" if len(walls[top]) == len(walls[bottom]) else ""
            print(f"| {top}/{bottom} | {median[top] / median[bottom]:.2f} | {meaning}{by_round} |")
    if "b" in training and "d" in training:
        sequential, batched = rate("b"), rate("d")
        print(
            f"| b/d training only | {batched / sequential:.2f} | model-steps/s: {sequential:.0f} sequential, "
            f"{batched:.0f} vmap (target >= 2.5); by CPU time {rate('d', True) / rate('b', True):.2f} |"
        )


BATCHED_GOAL = 2.0  # the batched sweep against the sequential one, default grid at 100 steps, whole processes


def print_batched_goal(walls: dict, experiment: str) -> None:
    """The batched engine's goal: (a) over (e), whole processes side by side, against BATCHED_GOAL."""
    if not walls.get("a") or not walls.get("e"):
        return
    from tinytrain.spec import load_experiment

    steps = load_experiment(experiment).settings["steps"]
    ratio = statistics.median(walls["a"]) / statistics.median(walls["e"])
    by_round = ", ".join(f"{a / e:.2f}" for a, e in zip(walls["a"], walls["e"], strict=True))
    print(
        f"\ngoal, batched against sequential sweep ({Path(experiment).name}, {steps} steps, whole process): "
        f"sequential {statistics.median(walls['a']):.2f} s / batched {statistics.median(walls['e']):.2f} s = "
        f"{ratio:.2f} (rounds {by_round}); goal >= {BATCHED_GOAL:g}: {'met' if ratio >= BATCHED_GOAL else 'NOT met'}"
    )


def print_floors(training: dict, peak_gflops: float, bandwidth: float) -> None:
    """The memory floor of a perfectly fused engine and the FLOP rates reached, against one core's."""
    if "b" not in training or "d" not in training:
        return
    sequential, batched = (statistics.median(steps / seconds for seconds, steps, _ in training[key]) for key in "bd")
    fused_floor = FUSED_FLOATS_PER_PARAMETER * PARAMETERS * 4 / (bandwidth * 1e9)
    print(
        f"\nmemory floor of a perfectly fused batched engine: {fused_floor * 1e6:.0f} us a model-step "
        f"({FUSED_FLOATS_PER_PARAMETER:.1f} floats a parameter at {bandwidth:.1f} GB/s), i.e. at most "
        f"{1 / fused_floor / sequential:.1f}x the sequential loop; the vmap engine takes "
        f"{1e6 / batched:.0f} us a model-step, the sequential loop {1e6 / sequential:.0f} us"
    )
    for key, rate in (("sequential", sequential), ("vmap", batched)):
        fraction = rate * FLOP_PER_MODEL_STEP / (peak_gflops * 1e9)
        print(
            f"FLOP rate, {key}: {rate * FLOP_PER_MODEL_STEP / 1e9:.2f} GFLOP/s = {fraction:.1%} of one core's "
            "matmul peak"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--experiment", default=str(ROOT / "experiments" / "optimizer-grid.toml"))
    parser.add_argument("--skip-naive", action="store_true", help="skip (c), which takes minutes")
    parser.add_argument("--variants", default="abcdefghij", help="the variants to run, e.g. abde (default: all)")
    parser.add_argument("--digits", default=str(ROOT / "experiments" / "digits-grid.toml"))
    parser.add_argument(
        "--digits-set",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="override the digits experiment (as `tinytrain sweep --set`), e.g. steps=5",
    )
    parser.add_argument("--skip-digits", action="store_true", help="skip (g) and (h), which take minutes")
    parser.add_argument("--digits-only", action="store_true", help="only (g) and (h)")
    parser.add_argument(
        "--recipe-set",
        action="append",
        default=None,
        metavar="KEY=V",
        help="the recipe of (i) and (j), as `tinytrain sweep --set` [default: schedule=warmup-cosine, warmup=0.1]",
    )
    args = parser.parse_args()
    recipe_set = args.recipe_set or ["schedule=warmup-cosine", "warmup=0.1"]
    recipe = tuple(part for value in recipe_set for part in ("--set", value))
    chosen = "gh" if args.digits_only else args.variants
    keys = "".join(key for key in NAMES if key in chosen and not (args.skip_digits and key in "gh"))
    digits = [str(Path(args.digits).resolve()), *(part for value in args.digits_set for part in ("--set", value))]
    load_before = os.getloadavg()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; load average before: {load_before[0]:.2f}"
    )
    peak_gflops, bandwidth = matmul_gflops(), copy_bandwidth()
    print(f"one core, float32 1024x1024 matmul: {peak_gflops:.1f} GFLOP/s; copy of 64 MiB: {bandwidth:.1f} GB/s")
    walls, peaks, training, writers = measure(
        keys, str(Path(args.experiment).resolve()), args.repeat, args.skip_naive, digits, recipe
    )
    print("\n| variant | median wall (s) | runs | peak RSS (MiB) |\n| --- | ---: | ---: | ---: |")
    for key, values in walls.items():
        if values:
            print(f"| ({key}) {NAMES[key]} | {statistics.median(values):.2f} | {len(values)} | {peaks[key]:.0f} |")
    print_ratios(walls, training)
    print_batched_goal(walls, str(Path(args.experiment).resolve()))
    print_floors(training, peak_gflops, bandwidth)
    print_writers(walls, writers)
    print(
        f"load average after: {os.getloadavg()[0]:.2f} (before: {load_before[0]:.2f}); figures taken while "
        "other work ran are noisier, their ratios less so"
    )


if __name__ == "__main__":
    main()
