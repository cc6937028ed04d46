"""What every executor is: specs in, results out as they finish; and the bounded-submit loop of the local pool.

An executor takes specs and yields their results as they finish, calling `started(spec)` when a run is
handed out. Results always come back to the driver, which alone writes the store: a SQLite file never
gets writers from several processes, and a task that a cluster re-runs is still logged once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Protocol

from tinytrain.results import RunResult, failed_result
from tinytrain.spec import RunSpec

Started = Callable[[RunSpec], None]
EXECUTORS = ("inprocess", "pool", "dask")


class ExecutorError(RuntimeError):
    """The executor cannot start (an unreachable scheduler, a missing extra)."""


class Executor(Protocol):
    def prepare(self, specs: list[RunSpec]) -> None:
        """Load what training the specs needs (imports, first-use set-ups) while the sweep's writer starts."""

    def run(self, specs: list[RunSpec], started: Started) -> Iterator[RunResult]: ...

    def close(self, abandon: bool = False) -> None:
        """Release the workers; with abandon, without waiting for the runs in progress."""


def bounded(
    units: list[list[RunSpec]], started: Started, submit: Callable[[list[RunSpec]], Future], window: int
) -> Iterator[RunResult]:
    """Keep at most `window` units (a run, or a vmap batch) in flight; yield their results as they complete.

    A unit whose worker process died (the pool is then broken) comes back as failed results, like a run
    that raised: the sweep logs them FAILED, goes on with what it can, and exits 1.
    """

    def failed(unit: list[RunSpec], message: str) -> list[RunResult]:
        return [failed_result(spec, message) for spec in unit]

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
