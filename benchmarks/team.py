"""A team on one store, measured side by side: sweeps that share a grid, and writers into a server.

  sharing   one `tinytrain sweep` of the default grid against two started at once on a fresh store (each
            trains about half the cells, claimed before they train), whole processes, in alternating order:
            the wall time of the two (until both end) over that of the one; on a SQLite store and on
            `tinytrain server` over a PostgreSQL database. Also checks that each cell has one finished run.
  claims    what claiming costs a sweep alone: one sweep of a grid (experiments/scale-1k.toml at steps=10
            by default: short runs, where the writer sets the pace) on a fresh SQLite store, with its claims
            and with --force (which claims nothing), for each tinytrain source tree given (--code DIR, e.g.
            an older commit's `git archive`; "." is this one), all in alternating order: the claims' cost
            per cell is the difference over the cells, in wall time and in the writer's CPU.
  writers   runs per second into `tinytrain server` on PostgreSQL with 1, 2 and 4 writer processes (each a
            Recorder, as a sweep's writer or a worker logging for itself would be), every run a real record:
            params, 301 losses and the final weights as a LoggedModel (one result trained once, its spec
            changed per run, so that only writing is measured).

Run it under the bench lock, never beside another benchmark:
  flock /tmp/tinytrain-bench.lock .venv/bin/python benchmarks/team.py sharing --set steps=300
  flock /tmp/tinytrain-bench.lock .venv/bin/python benchmarks/team.py writers --runs 48
  flock /tmp/tinytrain-bench.lock .venv/bin/python benchmarks/team.py claims --code /tmp/before --code .
PostgreSQL: Debian's package (started here as the postgres user in a temporary folder, on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Postgres:
    """A throwaway PostgreSQL on 127.0.0.1 (as the postgres user when run as root)."""

    def __enter__(self) -> Postgres:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not found:
            raise SystemExit("PostgreSQL is not installed: apt-get install postgresql")
        self.bin = found[-1].parent
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.folder = Path(tempfile.mkdtemp(prefix="tinytrain-bench-pg-"))
        if self.as_user:
            shutil.chown(self.folder, "postgres")
        self.port, self.databases = free_port(), 0
        self.run("initdb", "-D", str(self.folder / "data"), "-A", "trust", "-U", "postgres")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder}"
        self.run(
            "pg_ctl", "-D", str(self.folder / "data"), "-o", options, "-l", str(self.folder / "log"), "-w", "start"
        )
        return self

    def run(self, program: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / program), *args], check=True, capture_output=True)

    def database(self) -> str:
        self.databases += 1
        name = f"bench_{self.databases}"
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def __exit__(self, *exc_info) -> None:
        self.run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


class Server:
    """`tinytrain server` on a database, in its own process group, stopped as a whole."""

    def __init__(self, database: str, folder: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [str(BIN / "tinytrain"), "server", database, "--artifacts", str(folder / "artifacts")]
        self.log = (folder / "server.log").open("w")
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise SystemExit(f"the server did not start: {folder / 'server.log'}")

    def stop(self) -> None:
        import signal

        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


# ---------------------------------------------------------------------------------------------------------
# sharing


def sweeps(count: int, uri: str, overrides: list[str], folder: Path) -> float:
    """Wall seconds until `count` sweeps of the default grid, started at once into `uri`, have all ended."""
    command = [str(BIN / "tinytrain"), "sweep", "--quiet", "--tracking-uri", uri]
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, "XDG_CACHE_HOME": str(folder / "cache")}
    started = time.perf_counter()
    processes = [
        subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    outputs = [process.communicate() for process in processes]
    wall = time.perf_counter() - started
    for process, (out, err) in zip(processes, outputs, strict=True):
        if process.returncode:
            raise SystemExit(f"a sweep failed ({process.returncode}): {err[-2000:]}")
        print("   ", out.splitlines()[0])
    return wall


def check_each_cell_once(uri: str) -> None:
    import mlflow

    client = mlflow.MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    keys = [
        run.data.tags["tinytrain.run_key"]
        for run in runs
        if run.data.tags.get("tinytrain.kind") == "run" and run.info.status == "FINISHED"
    ]
    running = [run for run in runs if run.info.status == "RUNNING"]
    if len(keys) != len(set(keys)) or running:
        raise SystemExit(f"{uri}: {len(keys)} finished runs for {len(set(keys))} cells, {len(running)} RUNNING")


def sharing(args) -> None:
    def store(backend: str, folder: Path, pg: Postgres | None):
        if backend == "sqlite":
            return f"sqlite:///{folder / 'store' / 'mlflow.db'}", None
        server = Server(pg.database(), folder)
        return server.url, server

    backends = args.backend or ["sqlite", "postgres"]
    with Postgres() if "postgres" in backends else _nothing() as pg:
        for backend in backends:
            walls: dict[int, list[float]] = {1: [], 2: []}
            for repeat in range(args.repeat):
                for count in (1, 2) if repeat % 2 == 0 else (2, 1):
                    with tempfile.TemporaryDirectory() as name:
                        folder = Path(name)
                        uri, server = store(backend, folder, pg)
                        try:
                            walls[count].append(sweeps(count, uri, args.set, folder))
                            check_each_cell_once(uri)
                        finally:
                            if server is not None:
                                server.stop()
                    print(f"  {backend}: {count} sweep(s): {walls[count][-1]:.1f} s", flush=True)
            ratios = [two / one for one, two in zip(walls[1], walls[2], strict=True)]
            print(
                f"{backend}: one sweep {statistics.median(walls[1]):.1f} s, two at once "
                f"{statistics.median(walls[2]):.1f} s: ratio {statistics.median(ratios):.2f} "
                f"({', '.join(f'{ratio:.2f}' for ratio in ratios)})",
                flush=True,
            )


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc_info):
        return False


# ---------------------------------------------------------------------------------------------------------
# claims


def alone(code: str, force: bool, args, folder: Path) -> tuple[float, float]:
    """Wall seconds and the writer's CPU seconds of one sweep on a fresh store, with tinytrain from `code`."""
    import json

    experiment_file = str(Path(args.file).resolve())
    command = [
        str(BIN / "tinytrain"),
        "sweep",
        experiment_file,
        "--quiet",
        "--tracking-uri",
        f"sqlite:///{folder}/s.db",
    ]
    for override in args.set or ["steps=10"]:
        command += ["--set", override]
    usage = folder / "writer-usage.jsonl"
    env = {**os.environ, "XDG_CACHE_HOME": str(Path(tempfile.gettempdir()) / "tinytrain-bench-cache")}
    env["TINYTRAIN_WRITER_USAGE"] = str(usage)
    if code != ".":  # put first on the path: the installed (editable) tinytrain is this tree
        env["PYTHONPATH"] = str(Path(code).resolve())
    started = time.perf_counter()
    done = subprocess.run([*command, *(["--force"] if force else [])], cwd=folder, env=env, capture_output=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"the sweep failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    record = json.loads(usage.read_text().splitlines()[-1])
    return wall, record["user"] + record["system"]


def claims(args) -> None:
    from tinytrain.spec import load_experiment

    cells = len(load_experiment(args.file, args.set or ["steps=10"]).specs())
    codes = args.code or ["."]
    variants = [(code, force) for code in codes for force in (False, True)]
    figures: dict[tuple[str, bool], list[tuple[float, float]]] = {variant: [] for variant in variants}
    for repeat in range(args.repeat):
        for code, force in variants if repeat % 2 == 0 else list(reversed(variants)):
            with tempfile.TemporaryDirectory() as name:
                figures[code, force].append(alone(code, force, args, Path(name)))
            wall, cpu = figures[code, force][-1]
            print(f"  {code} {'--force' if force else 'claims'}: {wall:.1f} s, writer CPU {cpu:.1f} s", flush=True)
    print(
        f"| code | sweep with claims | --force (no claims) | claims' cost a cell: wall | writer CPU |  ({cells} cells)"
    )
    print("| --- | --- | --- | --- | --- |")
    for code in codes:
        shared, forced = figures[code, False], figures[code, True]
        wall = statistics.median(s[0] for s in shared), statistics.median(f[0] for f in forced)
        cpu = statistics.median(s[1] for s in shared), statistics.median(f[1] for f in forced)
        print(
            f"| {code} | {wall[0]:.1f} s | {wall[1]:.1f} s | {(wall[0] - wall[1]) / cells * 1000:.1f} ms "
            f"| {(cpu[0] - cpu[1]) / cells * 1000:.1f} ms |"
        )


# ---------------------------------------------------------------------------------------------------------
# writers


def _write(uri: str, results: list, barrier, done) -> None:
    """One writer process: open the sweep and record its share of the runs, as a sweep's writer does."""
    from tinytrain.spec import load_experiment
    from tinytrain.tracking import Recorder

    experiment = load_experiment(None, [])
    recorder = Recorder(uri)
    recorder.open(experiment, [result.spec for result in results], {}, with_parent=True)
    barrier.wait()
    started = time.perf_counter()
    for result in results:
        recorder.run_started(result.spec)
        recorder.run_finished(result)
    done.put(time.perf_counter() - started)
    recorder.close("FINISHED")


def writers(args) -> None:
    from tinytrain.engines.sequential import train_safely
    from tinytrain.spec import load_experiment
    from tinytrain.tracking.background import _for_the_writer

    specs = load_experiment(None, ["steps=300", "seed=" + ",".join(str(seed) for seed in range(args.runs))]).specs()
    trained = _for_the_writer(train_safely(next(spec for spec in specs if spec.optimizer == "adam")))
    results = [dataclasses.replace(trained, spec=spec) for spec in specs[: args.runs]]
    context = multiprocessing.get_context("spawn")
    table: dict[int, list[float]] = {count: [] for count in args.writers}
    with Postgres() as pg:
        for repeat in range(args.repeat):
            for count in args.writers if repeat % 2 == 0 else list(reversed(args.writers)):
                with tempfile.TemporaryDirectory() as name:
                    server = Server(pg.database(), Path(name))
                    try:
                        barrier, done = context.Barrier(count + 1), context.Queue()
                        shares = [results[index::count] for index in range(count)]
                        processes = [
                            context.Process(target=_write, args=(server.url, share, barrier, done)) for share in shares
                        ]
                        for process in processes:
                            process.start()
                        barrier.wait()
                        started = time.perf_counter()
                        for _ in processes:
                            done.get()
                        wall = time.perf_counter() - started
                        for process in processes:
                            process.join()
                    finally:
                        server.stop()
                table[count].append(len(results) / wall)
                print(f"  {count} writer(s): {len(results) / wall:.2f} runs/s", flush=True)
    one = statistics.median(table[args.writers[0]])
    print("| writers | runs/s (median) | against one writer |")
    print("| --- | --- | --- |")
    for count, rates in table.items():
        print(f"| {count} | {statistics.median(rates):.2f} | {statistics.median(rates) / one:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    share = commands.add_parser("sharing")
    share.add_argument("--set", action="append", default=[], metavar="KEY=V")
    share.add_argument("--repeat", type=int, default=2)
    share.add_argument("--backend", action="append", choices=["sqlite", "postgres"])
    claim = commands.add_parser("claims")
    claim.add_argument("--file", default="experiments/scale-1k.toml")
    claim.add_argument("--set", action="append", default=[], metavar="KEY=V")
    claim.add_argument("--code", action="append", metavar="DIR", help="a tinytrain source tree ('.': this one)")
    claim.add_argument("--repeat", type=int, default=2)
    write = commands.add_parser("writers")
    write.add_argument("--runs", type=int, default=48)
    write.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4])
    write.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    {"sharing": sharing, "claims": claims, "writers": writers}[args.command](args)


if __name__ == "__main__":
    main()
