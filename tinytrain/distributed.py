"""Runs on a Dask cluster, and the local cluster behind `tinytrain cluster` / `make cluster`.

DaskExecutor hands each cell to the cluster as one task named after its run key, and yields every result
back to the driver exactly once: a task whose worker died is computed again elsewhere (the scheduler's
allowed-failures), but the driver holds one future per cell and writes one run per future. Workers never
touch the store. Dask is an optional extra (`pip install -e '.[dask]'`): this module imports it lazily,
so `tinytrain --help` and the other executors work without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinytrain.executors import ExecutorError, Started
from tinytrain.spec import PROJECT_ROOT, ConfigError, RunSpec

if TYPE_CHECKING:
    from tinytrain.train import RunResult

CONNECT_TIMEOUT = 5.0  # seconds to reach a scheduler before the sweep gives up (before any run starts)
WORKERS_TIMEOUT = 15.0  # seconds a reachable scheduler gets to show at least one worker
NO_WORKERS_TIMEOUT = 120.0  # seconds a sweep waits, mid-way, for a cluster that has lost every worker
POLL_SECONDS = 2.0  # how often a waiting driver looks at the cluster's health
INSTALL_HINT = "pip install -e '.[dask]'"
LOOPBACK = "127.0.0.1"
LOOPBACK_ANY_PORT = f"{LOOPBACK}:0"  # for the HTTP endpoints Dask starts even without a dashboard (else 0.0.0.0)

# Every process of the cluster (and each task's torch) starts with one thread: one run per core.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
# Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand memory back to the OS). Any value
# also turns off glibc's adaptive mmap threshold, and this allocation-heavy loop of small tensors then
# trains about 1.5x slower (measured here: 3.1 s against 2.0 s). None unsets it for the workers.
KEEP_GLIBC_MALLOC = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
KEEP_GLIBC_MALLOC_ENV = {"DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": "{'MALLOC_TRIM_THRESHOLD_': None}"}


def import_distributed() -> Any:
    """dask.distributed, or a one-line error that says how to install it."""
    try:
        import distributed
    except ImportError:
        raise ExecutorError(f"the Dask executor needs the dask extra: run {INSTALL_HINT} in the project's "
                            ".venv (or use --jobs N for a local process pool)") from None
    return distributed


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


# ---------------------------------------------------------------------------------------------------------
# What runs on a worker

_ONE_RUN_AT_A_TIME = threading.Lock()


def train_on_worker(spec: RunSpec) -> RunResult:
    """train_safely(spec), one run at a time per worker process.

    torch's seed, thread count and switches are process-wide: two runs sharing a process (a worker started
    with --nthreads > 1) would change each other's numbers, so they take turns.
    """
    from tinytrain.train import train_safely

    with _ONE_RUN_AT_A_TIME:
        return train_safely(spec)


def worker_environment() -> dict[str, str]:
    """What a worker computes with; the driver refuses workers whose torch differs from its own."""
    import platform

    import torch

    import tinytrain

    return {"python": platform.python_version(), "torch": torch.__version__, "tinytrain": tinytrain.__file__,
            "threads": str(torch.get_num_threads()), "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_", "")}


def check_address(scheduler: str) -> str:
    """A scheduler address as Dask takes it (tcp://HOST:PORT); a malformed one is bad input (exit code 2)."""
    scheme, _, location = scheduler.rpartition("://")
    if scheme not in ("", "tcp") or not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:/\s\[\]]+):\d{1,5}", location):
        raise ConfigError(f"--scheduler {scheduler!r} is not a Dask scheduler address: give tcp://HOST:PORT, "
                          "e.g. tcp://127.0.0.1:8786 from `make cluster`")
    return scheduler


async def _handshake(distributed: Any, address: str, timeout: float) -> None:
    """Connect and exchange Dask's handshake, all within `timeout`.

    A refused connection fails at once (Dask would retry until the timeout), and a server that is not
    Dask's cannot hang the sweep (a Client alone waits forever for its handshake).
    """
    host, _, port = address.rpartition("://")[2].rpartition(":")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
        pass
    comm = await asyncio.wait_for(distributed.comm.connect(address, timeout=timeout), timeout)
    await comm.close()


def task_key(spec: RunSpec) -> str:
    """The cluster's name for a cell's task: distinct cells never share one, a cell always gets the same."""
    every = f"-every{spec.checkpoint_every}" if spec.checkpoint_every else ""  # changes what a result holds
    return f"train-{spec.key}{every}"


# ---------------------------------------------------------------------------------------------------------
# The executor


class DaskExecutor:
    """Runs on a Dask cluster: a running scheduler (`--scheduler tcp://HOST:PORT`) or, without one, a local
    cluster of `workers` processes (one thread each, on 127.0.0.1) started for this sweep and closed after.

    Everything that can make the cluster unusable (dask missing, scheduler unreachable, no workers, workers
    with another torch) is found here, before any run starts.
    """

    def __init__(self, scheduler: str | None, workers: int = 1, *,
                 task: Callable[[RunSpec], RunResult] = train_on_worker,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        distributed = import_distributed()
        self.task = task  # what runs a spec on a worker; tests give one that kills its worker
        self.cluster = None
        # This executor turns what goes wrong with the cluster into one-line errors: the client's own
        # error logs (a lost scheduler, its reconnection attempts) would only repeat them with tracebacks.
        self._client_log = logging.getLogger("distributed.client")
        self._client_log_level = self._client_log.level
        self._client_log.setLevel(logging.CRITICAL)
        if scheduler:
            self.address = check_address(scheduler)
            fix = "start one with `make cluster` (tinytrain cluster), or fix --scheduler"
            try:
                asyncio.run(_handshake(distributed, scheduler, connect_timeout))
            except ConnectionRefusedError:
                raise ExecutorError(f"cannot reach a Dask scheduler at {scheduler} (connection refused): {fix}") \
                    from None
            except (OSError, TimeoutError):
                raise ExecutorError(f"cannot reach a Dask scheduler at {scheduler} (no answer within "
                                    f"{connect_timeout:g} s): {fix}") from None
            except Exception:  # something else listens there, and answers
                raise ExecutorError(f"{scheduler} answers, but not as a Dask scheduler: {fix}") from None
            self.client = distributed.Client(scheduler, timeout=f"{connect_timeout}s", set_as_default=False)
        else:
            import dask

            try:
                with dask.config.set(KEEP_GLIBC_MALLOC):  # read by the nannies as they start
                    self.cluster = distributed.LocalCluster(
                        n_workers=workers, threads_per_worker=1, processes=True, host=LOOPBACK,
                        dashboard_address=LOOPBACK_ANY_PORT, silence_logs=logging.ERROR,
                    )
            except Exception as error:  # no memory, no ports, a worker that cannot start
                raise ExecutorError(f"cannot start a local Dask cluster of {workers} worker(s) "
                                    f"({_first_line(error)}): try --jobs 1, or the process pool (--executor pool)") \
                    from None
            self.client = distributed.Client(self.cluster, set_as_default=False)
            self.address = self.cluster.scheduler_address
        try:
            self._check_workers()
        except BaseException:
            self.close()
            raise

    def _check_workers(self) -> None:
        """At least one worker, and every worker can import tinytrain with the driver's torch."""
        try:
            self.client.wait_for_workers(1, timeout=WORKERS_TIMEOUT)
        except Exception:  # TimeoutError
            raise ExecutorError(f"the Dask scheduler at {self.address} has no workers after {WORKERS_TIMEOUT:g} s: "
                                f"start some with `dask worker {self.address} --nthreads 1` from the project's "
                                ".venv, or use `make cluster`") from None
        import torch

        for worker, found in self.client.run(worker_environment, on_error="return").items():
            if isinstance(found, BaseException):
                raise ExecutorError(f"the Dask worker {worker} cannot run tinytrain ({_first_line(found)}): start "
                                    "workers from the project's .venv (`make cluster` does)")
            if found["torch"] != torch.__version__:
                raise ExecutorError(f"the Dask worker {worker} has torch {found['torch']}, this process "
                                    f"{torch.__version__}: the numbers would differ; start workers from the "
                                    "project's .venv")

    def _window(self) -> int:
        """How many runs are in flight at most: two per worker thread, so no worker waits for the driver.

        0 while the cluster has no workers or cannot be asked (the wait loop then checks its health).
        """
        try:
            threads = sum(self.client.nthreads().values())
        except Exception:  # the scheduler is gone for now
            return 0
        return 2 * threads

    def run(self, specs: list[RunSpec], started: Started) -> Iterator[RunResult]:
        """Hand the cells out, a bounded number at a time; yield each result once, as it arrives."""
        distributed = import_distributed()
        if any(spec.engine == "vmap" for spec in specs):
            raise ExecutorError("engine vmap trains its cells in batched nets on this machine: run it "
                                "with --executor inprocess or --jobs N")
        keys = [task_key(spec) for spec in specs]
        if len(set(keys)) != len(keys):
            raise ExecutorError("the sweep lists the same cell twice: list each grid value once")
        queue = list(reversed(specs))
        pending: dict[Any, RunSpec] = {}  # one future per cell: the only way a result reaches the driver
        waiting_since: float | None = None
        try:
            while queue or pending:
                window = self._window()
                while queue and len(pending) < window:
                    spec = queue.pop()
                    started(spec)
                    pending[self.client.submit(self.task, spec, key=task_key(spec))] = spec
                if not pending:  # nobody to hand a run to
                    time.sleep(POLL_SECONDS)
                    waiting_since = self._check_alive(waiting_since)
                    continue
                try:
                    with self.client.as_current():  # wait() asks for a current client; this one is not global
                        done = distributed.wait(list(pending), timeout=POLL_SECONDS,
                                                return_when="FIRST_COMPLETED").done
                except TimeoutError:
                    waiting_since = self._check_alive(waiting_since)
                    continue
                except CancelledError:  # the client lost the scheduler: Dask cancels every future at once
                    raise self._lost() from None
                waiting_since = None
                for future in done:
                    result = self._collect(future, pending.pop(future))
                    future.release()
                    yield result
        finally:
            for future in pending:
                future.cancel()

    def _check_alive(self, waiting_since: float | None) -> float | None:
        """Nothing finished for a while: fine while workers run; an error once the cluster is gone too long."""
        try:
            healthy = self.client.status == "running" and bool(self.client.nthreads())
        except Exception:  # the scheduler does not answer
            healthy = False
        if healthy:
            return None
        now = time.monotonic()
        if waiting_since is None:
            return now
        if now - waiting_since > NO_WORKERS_TIMEOUT:
            raise ExecutorError(f"the Dask cluster at {self.address} has had no workers (or no scheduler) for "
                                f"{NO_WORKERS_TIMEOUT:g} s: restart it (make cluster), then run the same command "
                                "again to resume")
        return waiting_since

    def _collect(self, future: Any, spec: RunSpec) -> RunResult:
        """A finished task's result; a task the cluster gave up on (its workers kept dying) is a failed run."""
        from tinytrain.train import FAILED, RunResult

        if future.status == "cancelled":
            raise self._lost()
        try:
            return future.result()
        except CancelledError:
            raise self._lost() from None
        except Exception as error:  # KilledWorker after allowed-failures, or a result that cannot travel
            return RunResult(spec, [], FAILED, error=f"{type(error).__name__}: {_first_line(error)}")

    def _lost(self) -> ExecutorError:
        return ExecutorError(f"lost the Dask scheduler at {self.address} mid-sweep: restart it (make cluster), then "
                             "run the same command again to resume (finished cells are skipped)")

    def close(self) -> None:
        """Disconnect; a local cluster started for the sweep is shut down with it."""
        client, self.client = getattr(self, "client", None), None
        with _quiet("distributed"):  # a client closed while it reconnects logs the cancelled attempt as an error
            if client is not None:
                client.close()
            if self.cluster is not None:
                self.cluster.close()
                self.cluster = None
        self._client_log.setLevel(self._client_log_level)


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------------------------------------------------
# `tinytrain cluster`: a scheduler and workers in the background, on loopback, until `--stop`

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


def start_cluster(port: int = 8786, workers: int = 2, folder: Path = CLUSTER_FOLDER,
                  timeout: float = START_TIMEOUT) -> ClusterState:
    """Start a Dask scheduler and `workers` workers (one thread each) on 127.0.0.1, detached, and wait for them.

    Each process runs in its own session (so it outlives this command and `--stop` can end its whole
    process group), with this Python, so the workers import this tinytrain and this torch.
    """
    distributed = import_distributed()
    folder = Path(folder)
    state = ClusterState.load(folder)
    if state is not None and any(_running(process) for process in state.processes):
        raise ExecutorError(f"a cluster started here is already running at {state.address}: use it, or stop it "
                            "with `tinytrain cluster --stop` (make cluster-stop)")
    if not _port_is_free(port):
        raise ExecutorError(f"port {port} on {LOOPBACK} is in use: pick another with --port "
                            "(make cluster SCHEDULER_PORT=...)")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    address = f"tcp://{LOOPBACK}:{port}"
    state = ClusterState(address, workers, [])
    commands = {"scheduler": ["distributed.cli.dask_scheduler", "--host", LOOPBACK, "--port", str(port),
                              "--no-dashboard", "--dashboard-address", LOOPBACK_ANY_PORT]}
    for index in range(workers):
        commands[f"worker-{index}"] = [
            "distributed.cli.dask_worker", address, "--host", LOOPBACK, "--nthreads", "1",
            "--name", f"tinytrain-worker-{index}", "--no-dashboard", "--dashboard-address", LOOPBACK_ANY_PORT,
            "--death-timeout", "60",
            "--local-directory", str((folder / f"worker-{index}").resolve()),
        ]
    environment = cluster_environment()
    popens: dict[str, subprocess.Popen] = {}
    import psutil

    try:
        for role, arguments in commands.items():
            log = folder / f"{role}.log"
            with open(log, "wb") as output:
                popen = subprocess.Popen([sys.executable, "-m", *arguments], stdin=subprocess.DEVNULL,
                                         stdout=output, stderr=subprocess.STDOUT, env=environment,
                                         start_new_session=True)
            popens[role] = popen
            state.processes.append(ClusterProcess(role, popen.pid, psutil.Process(popen.pid).create_time(),
                                                  str(log)))
            state.save(folder)  # at once, so that --stop also ends a start that failed half-way
        _wait_until_ready(distributed, state, popens, timeout)
    except BaseException:
        stop_cluster(folder, keep_logs=True)
        raise
    return state


def _wait_until_ready(distributed: Any, state: ClusterState, popens: dict[str, subprocess.Popen],
                      timeout: float) -> None:
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
                    raise ExecutorError(f"the Dask scheduler did not answer within {timeout:g} s: see "
                                        f"{state.processes[0].log}") from None
        while len(client.nthreads()) < state.workers:
            _check_started(state, popens)
            if time.monotonic() > deadline:
                raise ExecutorError(f"only {len(client.nthreads())} of {state.workers} workers connected within "
                                    f"{timeout:g} s: see the logs in {Path(state.processes[0].log).parent}")
            time.sleep(0.2)
        for worker, found in client.run(worker_environment, on_error="return").items():
            if isinstance(found, BaseException):
                raise ExecutorError(f"the worker {worker} cannot import tinytrain ({_first_line(found)}): install "
                                    "it in this environment with pip install -e '.[dask]'")
    finally:
        if client is not None:
            client.close()


def _check_started(state: ClusterState, popens: dict[str, subprocess.Popen]) -> None:
    for process in state.processes:
        code = popens[process.role].poll()
        if code is not None:
            lines = Path(process.log).read_text(errors="replace").strip().splitlines() or ["(empty log)"]
            raise ExecutorError(f"the {process.role} exited with code {code} while starting: {lines[-1]} "
                                f"(log: {process.log})")


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
