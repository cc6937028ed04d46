"""`tinytrain cluster` / `make cluster`: a Dask scheduler and workers in the background, on loopback, until
`--stop`. Sweeps use it through the Dask executor (executors/dask_cluster.py); this module only starts,
checks and stops its processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tinytrain.executors.base import ExecutorError
from tinytrain.executors.dask_cluster import (
    KEEP_GLIBC_MALLOC_ENV,
    LOOPBACK,
    LOOPBACK_ANY_PORT,
    ONE_THREAD,
    first_line,
    import_distributed,
    worker_environment,
)
from tinytrain.spec import PROJECT_ROOT

CLUSTER_FOLDER = Path(".tinytrain-cluster")
STATE_FILE = "cluster.json"
START_TIMEOUT = 90.0


@dataclass
class ClusterProcess:
    """One background process of the cluster; its pid is also its process group (its own session)."""

    role: str  # scheduler, worker-0, worker-1, ...
    pid: int
    created: float  # its start time, so that a reused pid is never signalled
    log: str


@dataclass
class ClusterState:
    """What `tinytrain cluster` started, kept in .tinytrain-cluster/cluster.json for `--stop`."""

    address: str
    workers: int
    processes: list[ClusterProcess]

    def save(self, folder: Path) -> None:
        (folder / STATE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> ClusterState | None:
        path = folder / STATE_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return cls(raw["address"], raw["workers"], [ClusterProcess(**item) for item in raw["processes"]])


def _running(process: ClusterProcess) -> Any:
    """The psutil process when it still runs as the one we started, else None."""
    import psutil

    try:
        found = psutil.Process(process.pid)
        if abs(found.create_time() - process.created) > 1 or found.status() == psutil.STATUS_ZOMBIE:
            return None
        return found
    except psutil.Error:
        return None


def _port_is_free(port: int) -> bool:
    """Nothing listens on the port (connections of a cluster just stopped, in TIME_WAIT, do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Dask's own server does
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def cluster_environment() -> dict[str, str]:
    """The environment of the cluster's processes: this Python's tinytrain first, one thread each, glibc's
    own malloc tuning (see KEEP_GLIBC_MALLOC)."""
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **ONE_THREAD, **KEEP_GLIBC_MALLOC_ENV, "PYTHONPATH": path}


def start_cluster(
    port: int = 8786, workers: int = 2, folder: Path = CLUSTER_FOLDER, timeout: float = START_TIMEOUT
) -> ClusterState:
    """Start a Dask scheduler and `workers` workers (one thread each) on 127.0.0.1, detached, and wait for them.

    Each process runs in its own session (so it outlives this command and `--stop` can end its whole
    process group), with this Python, so the workers import this tinytrain and this torch.
    """
    distributed = import_distributed()
    folder = Path(folder)
    state = ClusterState.load(folder)
    if state is not None and any(_running(process) for process in state.processes):
        raise ExecutorError(
            f"a cluster started here is already running at {state.address}: use it, or stop it "
            "with `tinytrain cluster --stop` (make cluster-stop)"
        )
    if not _port_is_free(port):
        raise ExecutorError(
            f"port {port} on {LOOPBACK} is in use: pick another with --port (make cluster SCHEDULER_PORT=...)"
        )
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    address = f"tcp://{LOOPBACK}:{port}"
    state = ClusterState(address, workers, [])
    commands = {
        "scheduler": [
            "distributed.cli.dask_scheduler",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--no-dashboard",
            "--dashboard-address",
            LOOPBACK_ANY_PORT,
        ]
    }
    for index in range(workers):
        commands[f"worker-{index}"] = [
            "distributed.cli.dask_worker",
            address,
            "--host",
            LOOPBACK,
            "--nthreads",
            "1",
            "--name",
            f"tinytrain-worker-{index}",
            "--no-dashboard",
            "--dashboard-address",
            LOOPBACK_ANY_PORT,
            "--death-timeout",
            "60",
            "--local-directory",
            str((folder / f"worker-{index}").resolve()),
        ]
    environment = cluster_environment()
    popens: dict[str, subprocess.Popen] = {}
    import psutil

    try:
        for role, arguments in commands.items():
            log = folder / f"{role}.log"
            with open(log, "wb") as output:
                popen = subprocess.Popen(
                    [sys.executable, "-m", *arguments],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=environment,
                    start_new_session=True,
                )
            popens[role] = popen
            state.processes.append(ClusterProcess(role, popen.pid, psutil.Process(popen.pid).create_time(), str(log)))
            state.save(folder)  # at once, so that --stop also ends a start that failed half-way
        _wait_until_ready(distributed, state, popens, timeout)
    except BaseException:
        stop_cluster(folder, keep_logs=True)
        raise
    return state


def _wait_until_ready(
    distributed: Any, state: ClusterState, popens: dict[str, subprocess.Popen], timeout: float
) -> None:
    """Until the scheduler answers, every worker is connected and each one imports tinytrain."""
    deadline = time.monotonic() + timeout
    client = None
    try:
        while client is None:
            _check_started(state, popens)
            try:
                client = distributed.Client(state.address, timeout="2s", set_as_default=False)
            except OSError:
                if time.monotonic() > deadline:
                    raise ExecutorError(
                        f"the Dask scheduler did not answer within {timeout:g} s: see {state.processes[0].log}"
                    ) from None
        while len(client.nthreads()) < state.workers:
            _check_started(state, popens)
            if time.monotonic() > deadline:
                raise ExecutorError(
                    f"only {len(client.nthreads())} of {state.workers} workers connected within "
                    f"{timeout:g} s: see the logs in {Path(state.processes[0].log).parent}"
                )
            time.sleep(0.2)
        for worker, found in client.run(worker_environment, on_error="return").items():
            if isinstance(found, BaseException):
                raise ExecutorError(
                    f"the worker {worker} cannot import tinytrain ({first_line(found)}): install "
                    "it in this environment with pip install -e '.[dask]'"
                )
    finally:
        if client is not None:
            client.close()


def _check_started(state: ClusterState, popens: dict[str, subprocess.Popen]) -> None:
    for process in state.processes:
        code = popens[process.role].poll()
        if code is not None:
            lines = Path(process.log).read_text(errors="replace").strip().splitlines() or ["(empty log)"]
            raise ExecutorError(
                f"the {process.role} exited with code {code} while starting: {lines[-1]} (log: {process.log})"
            )


def stop_cluster(folder: Path = CLUSTER_FOLDER, keep_logs: bool = False, grace: float = 10.0) -> int:
    """Stop every process group that start_cluster recorded (workers first), then clean up the folder.

    SIGTERM first, so that workers leave the scheduler cleanly; SIGKILL for whatever still runs after
    `grace` seconds. Returns how many of the recorded processes were still running.
    """
    import psutil

    folder = Path(folder)
    state = ClusterState.load(folder)
    if state is None:
        if not keep_logs:
            shutil.rmtree(folder, ignore_errors=True)  # what a start that failed left, or nothing
        return 0
    stopped = 0
    workers = [process for process in state.processes if process.role != "scheduler"]
    schedulers = [process for process in state.processes if process.role == "scheduler"]
    for group in (workers, schedulers):
        alive = [(process, found) for process in group if (found := _running(process)) is not None]
        stopped += len(alive)
        members = []
        for process, found in alive:
            try:
                members += [found, *found.children(recursive=True)]
                os.killpg(process.pid, signal.SIGTERM)
            except (ProcessLookupError, psutil.Error):
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_is_live(member) for member in members):
            time.sleep(0.1)
        if any(_is_live(member) for member in members):  # SIGTERM was not enough: the whole groups, at once
            for process, _found in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            for member in members:  # and any that left its group
                if _is_live(member):
                    with contextlib.suppress(psutil.Error):
                        member.kill()
    (folder / STATE_FILE).unlink(missing_ok=True)
    if not keep_logs:
        shutil.rmtree(folder, ignore_errors=True)
    return stopped


def _is_live(member: Any) -> bool:
    import psutil

    try:
        return member.is_running() and member.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
