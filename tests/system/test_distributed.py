"""Scaling out with real processes: a Dask scheduler and workers, a process pool, a worker killed mid-sweep.

Every executor must give the in-process numbers bit for bit and log every cell exactly once; whatever
cannot work (no scheduler, no dask) is a one-line error before any run starts. Everything binds to
127.0.0.1 on free ports, and every process a test starts is stopped in its fixture's teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, invoke
from tinytrain.cli import cli
from tinytrain.executors import ExecutorError
from tinytrain.spec import load_experiment

# Three optimizers (one a variant), a stable and a diverging learning rate, two seeds: 12 short cells.
GRID = """# tinytrain sweep scale-out.toml
name = "scale-out"
steps = 5
[grid]
optimizer = ["adam", "sgd-momentum", "rmsprop"]
lr = [1e-3, 10.0]
seed = [0, 1]
[optimizers.sgd-momentum]
type = "sgd"
momentum = 0.9
"""
CELLS = 12
CLI_TIMEOUT = 300


def tinytrain(*args: str, cwd: Path, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    """The CLI in a process of its own, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "tinytrain", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def cell_runs(uri: str, experiment: str = "scale-out") -> list:
    import mlflow

    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], max_results=1000)
    return [run for run in runs if run.data.tags.get("tinytrain.kind") == "run"]


def losses_by_cell(uri: str) -> dict[str, list[str]]:
    """run key -> every logged loss as float.hex (exact, NaN included), read back from the store."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    losses = {}
    for run in cell_runs(uri):
        history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda metric: metric.step)
        losses[run.data.tags["tinytrain.run_key"]] = [metric.value.hex() for metric in history]
    return losses


def assert_each_cell_finished_once(uri: str, cells: int) -> None:
    runs = cell_runs(uri)
    keys = [run.data.tags["tinytrain.run_key"] for run in runs]
    assert len(keys) == cells and len(set(keys)) == cells, sorted(keys)
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert all(run.data.tags.get("tinytrain.outcome") in ("finished", "diverged") for run in runs)


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("grid") / "scale-out.toml"
    path.write_text(GRID)
    return path


@pytest.fixture(scope="module")
def in_process_losses(grid_file, tmp_path_factory) -> dict[str, list[str]]:
    """The reference: the same grid, run in this process, into a store of its own."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('in-process') / 'mlflow.db'}"
    result = invoke(["sweep", str(grid_file), "--tracking-uri", uri, "--quiet"])
    assert result.exit_code == 0, result.output
    losses = losses_by_cell(uri)
    assert len(losses) == CELLS
    return losses


def stop_recorded_cluster(home: Path) -> None:
    """Safety net after `tinytrain cluster --stop`: SIGKILL every process group the state file still names."""
    state = home / ".tinytrain-cluster" / "cluster.json"
    if not state.exists():
        return
    for process in json.loads(state.read_text())["processes"]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process["pid"], signal.SIGKILL)


@pytest.fixture
def dask_cluster(tmp_path):
    """`tinytrain cluster`: a scheduler and two workers on a free loopback port, stopped however the test ends."""
    home = tmp_path / "cluster-home"
    home.mkdir()
    port = free_port()
    try:
        started = tinytrain("cluster", "--port", str(port), "--workers", "2", cwd=home, timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        address = f"tcp://127.0.0.1:{port}"
        assert f"tinytrain sweep --executor dask --scheduler {address}" in started.stdout
        yield address, home
    finally:
        stopped = tinytrain("cluster", "--stop", cwd=home, timeout=120)
        stop_recorded_cluster(home)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not (home / ".tinytrain-cluster").exists()


def cluster_processes(home: Path) -> list:
    import psutil

    state = json.loads((home / ".tinytrain-cluster" / "cluster.json").read_text())
    processes = []
    for recorded in state["processes"]:
        process = psutil.Process(recorded["pid"])
        processes += [process, *process.children(recursive=True)]
    return processes


# ---------------------------------------------------------------------------------------------------------
# The same numbers everywhere


@pytest.mark.slow
def test_a_sweep_on_a_dask_cluster_equals_the_in_process_sweep_bit_for_bit(
    dask_cluster, grid_file, in_process_losses, tmp_path
):
    address, home = dask_cluster
    listening = [
        connection.laddr.ip
        for process in cluster_processes(home)
        for connection in process.net_connections("tcp")
        if connection.status == "LISTEN"
    ]
    assert listening and set(listening) == {"127.0.0.1"}  # the scheduler, nannies, workers, their HTTP
    from distributed import Client

    from tinytrain.executors.dask_cluster import worker_environment

    with Client(address, timeout="10s", set_as_default=False) as client:
        workers = client.run(worker_environment)
    assert len(workers) == 2
    # one thread each, and glibc's adaptive malloc (Dask's MALLOC_TRIM_THRESHOLD_ makes training 1.5x slower)
    assert all(found["threads"] == "1" and found["malloc_trim"] == "" for found in workers.values()), workers
    uri = f"sqlite:///{tmp_path / 'dask-store' / 'mlflow.db'}"
    done = tinytrain(
        "sweep",
        str(grid_file),
        "--executor",
        "dask",
        "--scheduler",
        address,
        "--tracking-uri",
        uri,
        "--quiet",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{CELLS} runs: {CELLS} trained" in done.stdout
    assert losses_by_cell(uri) == in_process_losses
    assert_each_cell_finished_once(uri, CELLS)
    assert {run.data.tags["tinytrain.torch_threads"] for run in cell_runs(uri)} == {"1"}  # no oversubscription


@pytest.mark.slow
def test_a_local_process_pool_equals_the_in_process_sweep_bit_for_bit(grid_file, in_process_losses, tmp_path):
    uri = f"sqlite:///{tmp_path / 'pool-store' / 'mlflow.db'}"
    done = tinytrain("sweep", str(grid_file), "--jobs", "2", "--tracking-uri", uri, "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert losses_by_cell(uri) == in_process_losses
    assert_each_cell_finished_once(uri, CELLS)


@pytest.mark.slow
def test_a_dask_cluster_started_for_the_sweep_equals_the_in_process_sweep(grid_file, in_process_losses, tmp_path):
    uri = f"sqlite:///{tmp_path / 'local-dask-store' / 'mlflow.db'}"
    done = tinytrain(
        "sweep", str(grid_file), "--executor", "dask", "--jobs", "2", "--tracking-uri", uri, "--quiet", cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert losses_by_cell(uri) == in_process_losses
    assert_each_cell_finished_once(uri, CELLS)


# ---------------------------------------------------------------------------------------------------------
# Exactly once, when a worker dies


@pytest.mark.slow
def test_killing_a_worker_mid_sweep_still_logs_every_cell_exactly_once(dask_cluster, tmp_path, process_groups):
    """SIGKILL a worker while it trains a cell handed out after the first result came back: the scheduler
    runs that cell again elsewhere, and the store ends with one FINISHED run per cell, nothing RUNNING."""
    from distributed import Client

    from tinytrain.executors.dask_cluster import task_key

    address, _home = dask_cluster
    uri = f"sqlite:///{tmp_path / 'kill-store' / 'mlflow.db'}"
    overrides = ["steps=200", "optimizer=adam,sgd,adamw,rmsprop", "lr=0.001,0.01", "seed=0,1"]
    specs = load_experiment(overrides=overrides).specs()
    first_window = 4  # two per worker thread: a later cell is handed out only once a result has come back
    later_keys = {task_key(spec) for spec in specs[first_window:]}
    sweep = process_groups(
        [
            sys.executable,
            "-m",
            "tinytrain",
            "sweep",
            *[part for override in overrides for part in ("--set", override)],
            "--executor",
            "dask",
            "--scheduler",
            address,
            "--tracking-uri",
            uri,
            "--quiet",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = Client(address, timeout="10s", set_as_default=False)
    try:
        killed_key = None
        deadline = time.monotonic() + 120
        while killed_key is None:
            assert time.monotonic() < deadline and sweep.poll() is None, "the sweep ended before a kill"
            for worker, keys in client.processing().items():
                running_later = [key for key in keys if key in later_keys]
                if running_later:
                    os.kill(client.run(os.getpid, workers=[worker])[worker], signal.SIGKILL)
                    killed_key = running_later[0]
                    break
            time.sleep(0.01)
        stdout, stderr = sweep.communicate(timeout=CLI_TIMEOUT)
        story = [row for row in client.story(killed_key) if row[0] == "scheduler"]
    finally:
        client.close()
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    assert sweep.returncode == 0, stdout + stderr
    assert any(
        start == "processing" and stimulus.startswith("handle-worker-cleanup")
        for _, _, start, _, _, stimulus, *_ in story
    ), story  # the scheduler ran it again
    assert f"{len(specs)} runs: {len(specs)} trained" in stdout
    runs = cell_runs(uri, "optimizer-grid")
    assert len(runs) == len(specs)
    assert len({run.data.tags["tinytrain.run_key"] for run in runs}) == len(specs)
    assert {run.info.status for run in runs} == {"FINISHED"}  # none left RUNNING, none FAILED
    assert all(run.data.tags.get("tinytrain.outcome") in ("finished", "diverged") for run in runs)
    killed_cell = [run for run in runs if f"train-{run.data.tags['tinytrain.run_key']}" == killed_key]
    assert len(killed_cell) == 1  # the cell that was training on the killed worker: run again, logged once


@pytest.mark.slow
def test_losing_the_scheduler_mid_sweep_is_one_line_and_leaves_nothing_running(dask_cluster, tmp_path, process_groups):
    from distributed import Client

    address, home = dask_cluster
    uri = f"sqlite:///{tmp_path / 'lost-store' / 'mlflow.db'}"
    sweep = process_groups(
        [
            sys.executable,
            "-m",
            "tinytrain",
            "sweep",
            "--set",
            "steps=20000",
            "--set",
            "optimizer=adam",
            "--set",
            "seed=0,1,2,3",
            "--executor",
            "dask",
            "--scheduler",
            address,
            "--tracking-uri",
            uri,
            "--quiet",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with Client(address, timeout="10s", set_as_default=False) as client:
            deadline = time.monotonic() + 120
            while not any(client.processing().values()):
                assert time.monotonic() < deadline and sweep.poll() is None, "no run started"
                time.sleep(0.05)
        state = json.loads((home / ".tinytrain-cluster" / "cluster.json").read_text())
        scheduler = next(process["pid"] for process in state["processes"] if process["role"] == "scheduler")
        os.killpg(scheduler, signal.SIGKILL)
        stdout, stderr = sweep.communicate(timeout=CLI_TIMEOUT)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    assert sweep.returncode == 1
    assert stderr == (
        f"Error: lost the Dask scheduler at {address} mid-sweep: restart it (make cluster), then run "
        "the same command again to resume (finished cells are skipped)\n"
    )
    runs = cell_runs(uri, "optimizer-grid")
    assert runs and "RUNNING" not in {run.info.status for run in runs}


@pytest.mark.slow
def test_a_cell_whose_workers_keep_dying_is_a_failed_result_and_the_others_finish():
    """With allowed-failures at 0 the first death is final: that cell fails, the sweep goes on."""
    import dask

    from tinytrain.executors.dask_cluster import DaskExecutor
    from tinytrain.results import FAILED

    specs = load_experiment(overrides=["steps=3", "optimizer=adam", "lr=0.001", "seed=0,1,2"]).specs()

    def train_or_die(spec):  # pickled by value: a worker does not need this test module
        import os

        from tinytrain.executors.dask_cluster import train_on_worker

        if spec.seed == 1:
            os._exit(1)
        return train_on_worker(spec)

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        executor = DaskExecutor(None, workers=2, task=train_or_die)
    started = []
    try:
        results = {result.spec.seed: result for result in executor.run(specs, started.append)}
    finally:
        executor.close()
    assert started == specs
    assert sorted(results) == [0, 1, 2]
    assert results[1].outcome == FAILED and results[1].error.startswith("KilledWorker")
    assert results[0].outcome == results[2].outcome == "finished"


# ---------------------------------------------------------------------------------------------------------
# Failures: one line, before any run; a run that raises is logged FAILED and the sweep goes on


@pytest.mark.slow
def test_an_unreachable_scheduler_is_one_line_before_any_run(cli_runner, store_uri):
    port = free_port()  # nobody listens there
    result = cli_runner.invoke(
        cli,
        [
            "sweep",
            "--set",
            "steps=2",
            "--set",
            "optimizer=adam",
            "--set",
            "seed=0",
            "--executor",
            "dask",
            "--scheduler",
            f"tcp://127.0.0.1:{port}",
        ],
    )
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output.startswith(f"Error: cannot reach a Dask scheduler at tcp://127.0.0.1:{port} ")
    assert "make cluster" in result.output
    assert not Path(store_uri.removeprefix("sqlite:///")).exists()  # not even an empty store was written
    assert cell_runs(store_uri, "optimizer-grid") == []


def test_a_malformed_scheduler_address_is_bad_input(cli_runner, store_uri):
    result = cli_runner.invoke(cli, ["sweep", "--set", "steps=2", "--scheduler", "http://127.0.0.1:8786"])
    assert result.exit_code == 2
    assert result.output == (
        "Error: --scheduler 'http://127.0.0.1:8786' is not a Dask scheduler address: give "
        "tcp://HOST:PORT, e.g. tcp://127.0.0.1:8786 from `make cluster`\n"
    )


def test_scheduler_goes_with_the_dask_executor_only(cli_runner):
    result = cli_runner.invoke(cli, ["sweep", "--executor", "pool", "--scheduler", "tcp://127.0.0.1:8786"])
    assert result.exit_code == 2
    assert "use it with --executor dask" in result.output


def test_an_unreachable_tracking_server_is_one_line_before_the_cluster_is_asked(cli_runner):
    server, scheduler = free_port(), free_port()
    result = cli_runner.invoke(
        cli,
        [
            "sweep",
            "--set",
            "steps=2",
            "--tracking-uri",
            f"http://127.0.0.1:{server}",
            "--executor",
            "dask",
            "--scheduler",
            f"tcp://127.0.0.1:{scheduler}",
        ],
    )
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output.startswith(f"Error: cannot reach the tracking server at http://127.0.0.1:{server} ")


def test_without_the_dask_extra_the_error_says_how_to_install_it(monkeypatch):
    from tinytrain.executors.dask_cluster import DaskExecutor

    monkeypatch.setitem(sys.modules, "distributed", None)  # what `import distributed` meets without the extra
    with pytest.raises(ExecutorError, match=r"pip install -e '\.\[dask\]'"):
        DaskExecutor(None, workers=1)


def test_a_run_that_raises_is_logged_failed_and_the_sweep_goes_on(cli_runner, store_uri, monkeypatch):
    import tinytrain.engines.sequential

    real_train = tinytrain.engines.sequential.train

    def train_failing_seed_1(spec):
        if spec.seed == 1:
            raise RuntimeError("the optimizer exploded")
        return real_train(spec)

    monkeypatch.setattr(tinytrain.engines.sequential, "train", train_failing_seed_1)
    result = cli_runner.invoke(
        cli,
        ["sweep", "--set", "steps=3", "--set", "optimizer=adam", "--set", "lr=0.001", "--set", "seed=0,1,2", "--quiet"],
    )
    assert result.exit_code == 1, result.output
    assert "3 runs: 3 trained (2 finished, 0 diverged, 1 failed)" in result.output
    assert "failed: adam-lr0.001-seed1: RuntimeError: the optimizer exploded" in result.output
    runs = {int(run.data.params["seed"]): run for run in cell_runs(store_uri, "optimizer-grid")}
    assert sorted(runs) == [0, 1, 2]
    assert runs[1].info.status == "FAILED"
    assert runs[1].data.tags["tinytrain.error"] == "RuntimeError: the optimizer exploded"
    assert runs[1].data.tags["tinytrain.outcome"] == "failed"
    assert runs[0].info.status == runs[2].info.status == "FINISHED"


@pytest.mark.slow
def test_a_run_that_torch_rejects_on_a_worker_is_a_failed_result():
    """A spec that bypassed validation (a negative lr): torch raises on the worker, the driver gets FAILED."""
    from dataclasses import replace

    from tinytrain.executors.dask_cluster import DaskExecutor

    good = load_experiment(overrides=["steps=2", "optimizer=sgd", "lr=0.01", "seed=0"]).specs()[0]
    rejected = replace(good, lr=-1.0)
    executor = DaskExecutor(None, workers=1)
    try:
        results = {result.spec.lr: result for result in executor.run([rejected, good], lambda spec: None)}
    finally:
        executor.close()
    assert results[-1.0].outcome == "failed"
    assert results[-1.0].error == "ValueError: Invalid learning rate: -1.0"
    assert results[0.01].outcome == "finished"


# ---------------------------------------------------------------------------------------------------------
# `tinytrain cluster`


def test_cluster_stop_with_nothing_running_says_so(cli_runner):
    result = cli_runner.invoke(cli, ["cluster", "--stop"])
    assert result.exit_code == 0
    assert result.output == "No Dask cluster running from this folder (no .tinytrain-cluster/).\n"


def test_cluster_on_a_busy_port_is_one_line(cli_runner):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli_runner.invoke(cli, ["cluster", "--port", str(port)])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: port {port} on 127.0.0.1 is in use: pick another with --port (make cluster SCHEDULER_PORT=...)\n"
    )
    assert not Path(".tinytrain-cluster").exists()
