"""Writers that scale with cores, measured: a sweep's runs per second with 1 and 2 writers, and what bounds more.

  sweep   `tinytrain sweep FILE --set steps=10 --set writers=N` (default experiments/scale-1k.toml: 1,000 runs),
          whole processes into fresh SQLite stores, the writer counts alternated round by round: wall time,
          runs per second, the CPU of each writer process per run it wrote (the writers report their own
          usage, tracking/background.py) and of the sweep's process tree, and the load average.
  parts   where a writer's CPU goes a run: in this process, a Recorder claims (blocks of 32, as a sweep does) and
          writes --runs copies of one real 10-step result (record = none) into a fresh store, timing each part
          (the claim reads, MLflow's create_run, log_batch, set_terminated) per --every runs, so that a part that
          grows with the store shows; then bare MLflow (create_run with the same tags, one log_batch of the same
          params, metrics and tags, set_terminated) writes the same records into another fresh store.
  lock    what bounds more writers on one SQLite file: in this process, a Recorder (as a writer runs it)
          claims and writes --runs real 10-step results into a fresh store, and per run it measures the
          writer's CPU and how long a write transaction held the database's write lock (from a transaction's
          first write statement to its commit, as SQLAlchemy's events see them). N writers write at most
          N / (CPU a run) runs a second, and all of them together at most 1 / (lock held a run).

Run it under the bench lock, never beside another benchmark:
  flock /tmp/tinytrain-bench.lock .venv/bin/python benchmarks/writers.py sweep --writers 1 2 --repeat 3
  flock /tmp/tinytrain-bench.lock .venv/bin/python benchmarks/writers.py lock --runs 300
  flock /tmp/tinytrain-bench.lock .venv/bin/python benchmarks/writers.py parts --runs 10000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BIN, ROOT  # noqa: E402


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def one_sweep(experiment: str, steps: int, writers: int, folder: Path) -> dict:
    """One whole `tinytrain sweep` process into a fresh store: wall, the sweep's CPU, each writer's usage."""
    usage = folder / "usage.jsonl"
    command = [str(BIN / "tinytrain"), "sweep", experiment, "--quiet", "--tracking-uri", str(folder / "mlflow.db")]
    command += ["--set", f"steps={steps}", "--set", f"writers={writers}"]
    env = {**os.environ, "TINYTRAIN_WRITER_USAGE": str(usage)}
    with tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _pid, status, rusage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status):
            err.seek(0)
            raise SystemExit(f"{' '.join(command)} failed:\n{err.read()[-2000:]}")
    time.sleep(0.5)  # the writers append their usage as they exit
    reports = [json.loads(line) for line in usage.read_text().splitlines()]
    return {"wall": wall, "sweep_cpu": rusage.ru_utime + rusage.ru_stime, "writers": reports}


def sweep(args) -> None:
    from tinytrain.spec import load_experiment

    runs = len(load_experiment(ROOT / args.experiment, [f"steps={args.steps}"]).specs())
    table: dict[int, list[dict]] = {count: [] for count in args.writers}
    with tempfile.TemporaryDirectory(prefix="tinytrain-writers-") as scratch:
        for repeat in range(args.repeat):
            order = args.writers if repeat % 2 == 0 else list(reversed(args.writers))
            for count in order:
                folder = Path(scratch) / f"{repeat}-{count}"
                folder.mkdir()
                print(f"  round {repeat + 1}, {count} writer(s), load {load()}", flush=True)
                measured = one_sweep(args.experiment, args.steps, count, folder)
                table[count].append(measured)
                per_run = [
                    f"{1000 * (w['user'] + w['system']) / max(w['runs_written'], 1):.1f} ms x {w['runs_written']}"
                    for w in measured["writers"]
                ]
                print(
                    f"    {measured['wall']:.1f} s, {runs / measured['wall']:.1f} runs/s; sweep CPU "
                    f"{measured['sweep_cpu']:.1f} s (its process tree: writers it reaped included); "
                    f"writers' CPU a run written: {', '.join(per_run)}",
                    flush=True,
                )
    one = statistics.median(runs / m["wall"] for m in table[args.writers[0]])
    print(f"\n{args.experiment} at steps={args.steps} ({runs} runs), load {load()}")
    print("| writers | wall s (median) | runs/s (median) | against the first | writers' CPU s (median, all) |")
    print("| --- | --- | --- | --- | --- |")
    for count, measured in table.items():
        rate = statistics.median(runs / m["wall"] for m in measured)
        cpu = statistics.median(sum(w["user"] + w["system"] for w in m["writers"]) for m in measured)
        wall = statistics.median(m["wall"] for m in measured)
        print(f"| {count} | {wall:.1f} | {rate:.1f} | {rate / one:.2f}x | {cpu:.1f} |")


class WriteLock:
    """Time a SQLite store's write lock is held, from SQLAlchemy's events: a transaction takes it at its first
    INSERT, UPDATE or DELETE (pysqlite begins deferred transactions) and holds it until its commit or
    rollback. The commit's own append to the write-ahead log is not inside the measured span."""

    def __init__(self):
        self.held = 0.0
        self.transactions = 0
        self._since: float | None = None

    def install(self) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "before_cursor_execute", self._statement)
        event.listen(Engine, "commit", self._end)
        event.listen(Engine, "rollback", self._end)

    def _statement(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if self._since is None and statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
            self._since = time.perf_counter()

    def _end(self, conn) -> None:
        if self._since is not None:
            self.held += time.perf_counter() - self._since
            self.transactions += 1
            self._since = None


def lock(args) -> None:
    from tinytrain.engines.sequential import train_safely
    from tinytrain.spec import load_experiment
    from tinytrain.tracking.background import _for_the_writer
    from tinytrain.tracking.recorder import Recorder

    seeds = ",".join(str(seed) for seed in range(args.runs))
    experiment = load_experiment(ROOT / args.experiment, [f"steps={args.steps}", f"seed={seeds}", "optimizer=adam"])
    specs = experiment.specs()[: args.runs]
    trained = _for_the_writer(train_safely(specs[0]))
    results = [dataclasses.replace(trained, spec=spec) for spec in specs]
    with tempfile.TemporaryDirectory(prefix="tinytrain-lock-") as scratch:
        recorder = Recorder(f"sqlite:///{scratch}/mlflow.db")
        recorder.open(experiment, specs, {})
        warm = results[:5]  # the first runs load MLflow's lazy parts: not counted
        for result in warm:
            recorder.claim(result.spec)
            recorder.run_started(result.spec)
            recorder.run_finished(result)
        meter = WriteLock()
        meter.install()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        wall0 = time.perf_counter()
        for result in results[len(warm) :]:
            recorder.claim(result.spec)
            recorder.run_started(result.spec)
            recorder.run_finished(result)
        wall = time.perf_counter() - wall0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        recorder.close("FINISHED")
    count = len(results) - len(warm)
    cpu = (cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime) / count
    held = meter.held / count
    print(f"{count} runs of {args.steps} steps (claim, start, result) into a fresh SQLite store, load {load()}")
    print(f"  wall a run {1000 * wall / count:.1f} ms, writer CPU a run {1000 * cpu:.1f} ms")
    print(f"  write lock held a run {1000 * held:.2f} ms ({meter.transactions / count:.1f} write transactions)")
    print(f"  lock's share of a writer's run: {held / (wall / count):.1%}")
    print(
        f"  one writer at most {1 / cpu:.0f} runs/s; any number of writers on this file at most {1 / held:.0f} runs/s"
    )
    print(f"  writers before the lock binds: about {cpu / held:.1f}")


class PartTimer:
    """CPU seconds spent in chosen methods (process time, this thread), by label."""

    def __init__(self):
        self.spent: dict[str, float] = {}

    def wrap(self, owner, name: str, label: str) -> None:
        import functools

        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.spent[label] = self.spent.get(label, 0.0) + time.process_time() - started

        setattr(owner, name, timed)

    def take(self) -> dict[str, float]:
        spent, self.spent = self.spent, {}
        return spent


def parts(args) -> None:
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    from tinytrain.engines.sequential import train_safely
    from tinytrain.spec import load_experiment
    from tinytrain.tracking import store
    from tinytrain.tracking.background import _for_the_writer
    from tinytrain.tracking.provenance import environment
    from tinytrain.tracking.recorder import Recorder
    from tinytrain.tracking.sqlite import TunedConnections

    experiment = load_experiment(ROOT / args.experiment, [f"steps={args.steps}", "record=none"])
    specs = experiment.specs()[: args.runs]
    trained = _for_the_writer(train_safely(specs[0]))
    results = [dataclasses.replace(trained, spec=spec) for spec in specs]
    timer = PartTimer()
    timer.wrap(store.Store, "cell_states", "claim reads")
    timer.wrap(mlflow.MlflowClient, "create_run", "create_run")
    timer.wrap(mlflow.MlflowClient, "log_batch", "log_batch")
    timer.wrap(mlflow.MlflowClient, "set_terminated", "set_terminated")

    def report(who: str, first: int, count: int, cpu: float) -> None:
        spent = ", ".join(f"{label} {1000 * value / count:.2f}" for label, value in sorted(timer.take().items()))
        print(f"  {who} runs {first}-{first + count}: {1000 * cpu / count:.2f} ms of CPU a run ({spent})", flush=True)

    print(f"{len(results)} runs of {args.steps} steps, record = none, fresh SQLite stores, load {load()}")
    with tempfile.TemporaryDirectory(prefix="tinytrain-parts-") as scratch:
        recorder = Recorder(f"sqlite:///{scratch}/ours.db")
        recorder.open(experiment, specs, {})
        timer.take()
        cpu0, first = time.process_time(), 0
        for start in range(0, len(results), 32):
            block = results[start : start + 32]
            recorder.claim_many([result.spec for result in block])
            for result in block:
                recorder.run_started(result.spec)
                recorder.run_finished(result)
            done = start + len(block)
            if done - first >= args.every or done == len(results):
                report("ours", first, done - first, time.process_time() - cpu0)
                cpu0, first = time.process_time(), done
        recorder.close("FINISHED")

        uri = f"sqlite:///{scratch}/bare.db"
        tuning = TunedConnections(uri).install()  # the same SQLite settings as a sweep's writer
        client = mlflow.MlflowClient(uri)
        experiment_id = client.create_experiment("bare", artifact_location=f"{scratch}/bare-artifacts")
        parent = client.create_run(experiment_id).info.run_id
        tags = {"tinytrain.kind": "run", "tinytrain.owner": "bare", **environment(), "mlflow.parentRunId": parent}
        timer.take()
        cpu0, first = time.process_time(), 0
        for done, result in enumerate(results, 1):
            run_tags = {**tags, "tinytrain.run_key": result.spec.key, "tinytrain.lease_until": f"{time.time():.3f}"}
            run_id = client.create_run(experiment_id, run_name=result.spec.run_name, tags=run_tags).info.run_id
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, step) for k, history in result.logged_metrics().items() for step, v in history]
            metrics += [Metric(k, v, now, 0) for k, v in result.view_metrics().items()]
            end_tags = [RunTag("tinytrain.outcome", result.outcome)]
            end_tags += [RunTag(f"tinytrain.{k}", v) for k, v in result.runtime.items()]
            params = [Param(k, v) for k, v in result.spec.params().items()]
            client.log_batch(run_id, metrics=metrics, params=params, tags=end_tags)
            client.set_terminated(run_id, "FINISHED")
            if done - first >= args.every or done == len(results):
                report("bare", first, done - first, time.process_time() - cpu0)
                cpu0, first = time.process_time(), done
        tuning.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    whole = commands.add_parser("sweep")
    whole.add_argument("--experiment", default="experiments/scale-1k.toml")
    whole.add_argument("--steps", type=int, default=10)
    whole.add_argument("--writers", type=int, nargs="+", default=[1, 2])
    whole.add_argument("--repeat", type=int, default=3)
    held = commands.add_parser("lock")
    held.add_argument("--experiment", default="experiments/scale-1k.toml")
    held.add_argument("--steps", type=int, default=10)
    held.add_argument("--runs", type=int, default=300)
    split = commands.add_parser("parts")
    split.add_argument("--experiment", default="experiments/scale-10k.toml")
    split.add_argument("--steps", type=int, default=10)
    split.add_argument("--runs", type=int, default=2000)
    split.add_argument("--every", type=int, default=1000)
    args = parser.parse_args()
    {"sweep": sweep, "lock": lock, "parts": parts}[args.command](args)


if __name__ == "__main__":
    main()
