"""Runs on a Dask cluster (`--executor dask`): a running scheduler, or a local cluster started for the sweep.

DaskExecutor hands each cell to the cluster as one task named after its run key, and yields every result
back to the driver exactly once: a task whose worker died is computed again elsewhere (the scheduler's
allowed-failures), but the driver holds one future per cell and writes one run per future. Workers never
touch the store. Dask is an optional extra (`pip install -e '.[dask]'`): this module imports it lazily,
so `tinytrain --help` and the other executors work without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from typing import Any

from tinytrain.executors.base import ExecutorError, Started
from tinytrain.results import RunResult, failed_result
from tinytrain.spec import ConfigError, RunSpec

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
# trains markedly slower. None unsets it for the workers.
KEEP_GLIBC_MALLOC = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
KEEP_GLIBC_MALLOC_ENV = {"DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": "{'MALLOC_TRIM_THRESHOLD_': None}"}


def import_distributed() -> Any:
    """dask.distributed, or a one-line error that says how to install it."""
    try:
        import distributed
    except ImportError:
        raise ExecutorError(
            f"the Dask executor needs the dask extra: run {INSTALL_HINT} in the project's "
            ".venv (or use --jobs N for a local process pool)"
        ) from None
    return distributed


def first_line(error: BaseException) -> str:
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
    from tinytrain.engines.sequential import train_safely

    with _ONE_RUN_AT_A_TIME:
        return train_safely(spec)


def worker_environment() -> dict[str, str]:
    """What a worker computes with; the driver refuses workers whose torch differs from its own."""
    import platform

    import torch

    import tinytrain

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tinytrain": tinytrain.__file__,
        "threads": str(torch.get_num_threads()),
        "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_", ""),
    }


def check_address(scheduler: str) -> str:
    """A scheduler address as Dask takes it (tcp://HOST:PORT); a malformed one is bad input (exit code 2)."""
    scheme, _, location = scheduler.rpartition("://")
    if scheme not in ("", "tcp") or not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:/\s\[\]]+):\d{1,5}", location):
        raise ConfigError(
            f"--scheduler {scheduler!r} is not a Dask scheduler address: give tcp://HOST:PORT, "
            "e.g. tcp://127.0.0.1:8786 from `make cluster`"
        )
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

    def __init__(
        self,
        scheduler: str | None,
        workers: int = 1,
        *,
        task: Callable[[RunSpec], RunResult] = train_on_worker,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
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
                raise ExecutorError(
                    f"cannot reach a Dask scheduler at {scheduler} (connection refused): {fix}"
                ) from None
            except (OSError, TimeoutError):
                raise ExecutorError(
                    f"cannot reach a Dask scheduler at {scheduler} (no answer within {connect_timeout:g} s): {fix}"
                ) from None
            except Exception:  # something else listens there, and answers
                raise ExecutorError(f"{scheduler} answers, but not as a Dask scheduler: {fix}") from None
            self.client = distributed.Client(scheduler, timeout=f"{connect_timeout}s", set_as_default=False)
        else:
            import dask

            try:
                with dask.config.set(KEEP_GLIBC_MALLOC):  # read by the nannies as they start
                    self.cluster = distributed.LocalCluster(
                        n_workers=workers,
                        threads_per_worker=1,
                        processes=True,
                        host=LOOPBACK,
                        dashboard_address=LOOPBACK_ANY_PORT,
                        silence_logs=logging.ERROR,
                    )
            except Exception as error:  # no memory, no ports, a worker that cannot start
                raise ExecutorError(
                    f"cannot start a local Dask cluster of {workers} worker(s) "
                    f"({first_line(error)}): try --jobs 1, or the process pool (--executor pool)"
                ) from None
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
            raise ExecutorError(
                f"the Dask scheduler at {self.address} has no workers after {WORKERS_TIMEOUT:g} s: "
                f"start some with `dask worker {self.address} --nthreads 1` from the project's "
                ".venv, or use `make cluster`"
            ) from None
        import torch

        for worker, found in self.client.run(worker_environment, on_error="return").items():
            if isinstance(found, BaseException):
                raise ExecutorError(
                    f"the Dask worker {worker} cannot run tinytrain ({first_line(found)}): start "
                    "workers from the project's .venv (`make cluster` does)"
                )
            if found["torch"] != torch.__version__:
                raise ExecutorError(
                    f"the Dask worker {worker} has torch {found['torch']}, this process "
                    f"{torch.__version__}: the numbers would differ; start workers from the "
                    "project's .venv"
                )

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
            raise ExecutorError(
                "engine vmap trains its cells in batched nets on this machine: run it "
                "with --executor inprocess or --jobs N"
            )
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
                        done = distributed.wait(list(pending), timeout=POLL_SECONDS, return_when="FIRST_COMPLETED").done
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
            raise ExecutorError(
                f"the Dask cluster at {self.address} has had no workers (or no scheduler) for "
                f"{NO_WORKERS_TIMEOUT:g} s: restart it (make cluster), then run the same command "
                "again to resume"
            )
        return waiting_since

    def _collect(self, future: Any, spec: RunSpec) -> RunResult:
        """A finished task's result; a task the cluster gave up on (its workers kept dying) is a failed run."""
        if future.status == "cancelled":
            raise self._lost()
        try:
            return future.result()
        except CancelledError:
            raise self._lost() from None
        except Exception as error:  # KilledWorker after allowed-failures, or a result that cannot travel
            return failed_result(spec, f"{type(error).__name__}: {first_line(error)}")

    def _lost(self) -> ExecutorError:
        return ExecutorError(
            f"lost the Dask scheduler at {self.address} mid-sweep: restart it (make cluster), then "
            "run the same command again to resume (finished cells are skipped)"
        )

    def prepare(self, specs: list[RunSpec]) -> None:
        """Nothing here: the cluster's workers train."""

    def close(self, abandon: bool = False) -> None:
        """Disconnect (the runs in progress are cancelled); a local cluster started for the sweep shuts down too."""
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
