"""Where runs execute: in this process, in a local process pool, or on a Dask cluster.

An executor takes specs and yields their results as they finish, calling `started(spec)` when a run is
handed out. Results always come back to the driver, which alone writes the store: a SQLite file never
gets writers from several processes, and a task that a cluster re-runs is still logged once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING, Protocol

from tinytrain.spec import RunSpec

if TYPE_CHECKING:
    from tinytrain.train import RunResult

Started = Callable[[RunSpec], None]
EXECUTORS = ("inprocess", "pool", "dask")


class ExecutorError(RuntimeError):
    """The executor cannot start (an unreachable scheduler, a missing extra)."""


class Executor(Protocol):
    def run(self, specs: list[RunSpec], started: Started) -> Iterator[RunResult]: ...

    def close(self) -> None: ...


class InProcess:
    """Runs one after another in this process (the default; what every other executor must equal)."""

    def run(self, specs: list[RunSpec], started: Started) -> Iterator[RunResult]:
        if not specs:  # every cell done already: no need for torch
            return
        from tinytrain.train import train_safely

        sequential = [spec for spec in specs if spec.engine != "vmap"]
        for spec in sequential:
            started(spec)
            yield train_safely(spec)
        batch = [spec for spec in specs if spec.engine == "vmap"]
        if batch:
            from tinytrain.vmap import train_batch

            for spec in batch:
                started(spec)
            yield from train_batch(batch)

    def close(self) -> None:
        pass


def _pin_worker_threads() -> None:
    """Each worker process trains with the spec's thread count; start it at one to avoid oversubscription."""
    import torch

    torch.set_num_threads(1)


class ProcessPool:
    """A local pool of N worker processes (spawned, so no torch state is forked)."""

    def __init__(self, jobs: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.jobs = jobs
        self.pool = ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_pin_worker_threads
        )

    def run(self, specs: list[RunSpec], started: Started) -> Iterator[RunResult]:
        """Sequential runs one per task; vmap cells as one batch per worker, dealt round robin so that each
        batch mixes the update rules alike. At the vmap engine's runtime (one thread, oneDNN off) a cell's
        result does not depend on its batch, so splitting changes no number. Once the workers run, two
        batches on two cores train the default grid in 1.3 s against 2.2 s for one batch; starting the
        workers costs more than that at this size, so it pays off for longer sweeps (README, Performance).
        """
        runs = [[spec] for spec in specs if spec.engine != "vmap"]
        yield from _bounded(runs, started, lambda unit: self.pool.submit(_train_each, unit), 2 * self.jobs)
        batched = [spec for spec in specs if spec.engine == "vmap"]
        batches = [batched[start::self.jobs] for start in range(min(self.jobs, len(batched)))]
        yield from _bounded(batches, started, lambda batch: self.pool.submit(_train_batch, batch), self.jobs)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _train_each(specs: list[RunSpec]) -> list[RunResult]:
    """A worker's task: sequential runs, one after another."""
    from tinytrain.train import train_safely

    return [train_safely(spec) for spec in specs]


def _train_batch(specs: list[RunSpec]) -> list[RunResult]:
    """A worker's task for a vmap batch."""
    from tinytrain.vmap import train_batch

    return train_batch(specs)


def _bounded(units: list[list[RunSpec]], started: Started, submit: Callable[[list[RunSpec]], Future],
             window: int) -> Iterator[RunResult]:
    """Keep at most `window` units (a run, or a vmap batch) in flight; yield their results as they complete.

    A unit whose worker process died (the pool is then broken) comes back as failed results, like a run
    that raised: the sweep logs them FAILED, goes on with what it can, and exits 1.
    """
    from tinytrain.train import FAILED, RunResult

    def failed(unit: list[RunSpec], message: str) -> list[RunResult]:
        return [RunResult(spec, [], FAILED, error=message) for spec in unit]

    pending: dict[Future, list[RunSpec]] = {}
    queue = list(reversed(units))
    try:
        while queue or pending:
            while queue and len(pending) < window:
                unit = queue.pop()
                for spec in unit:
                    started(spec)
                try:
                    pending[submit(unit)] = unit
                except Exception as error:  # noqa: BLE001 - a broken pool refuses new work
                    yield from failed(unit, f"{type(error).__name__}: {error}")
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                unit = pending.pop(future)
                try:
                    yield from future.result()
                except Exception as error:  # noqa: BLE001 - e.g. BrokenProcessPool: its worker died
                    yield from failed(unit, f"{type(error).__name__}: {error or 'worker died'}")
    finally:
        for future in pending:
            future.cancel()


def make_executor(name: str = "inprocess", jobs: int = 1, scheduler: str | None = None) -> Executor:
    if name == "dask":
        from tinytrain.distributed import DaskExecutor

        return DaskExecutor(scheduler=scheduler, workers=max(jobs, 1))
    if name == "pool" or jobs > 1:
        return ProcessPool(jobs)
    return InProcess()
