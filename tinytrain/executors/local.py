"""Runs on this machine: one after another in this process, or on a local pool of worker processes."""

from __future__ import annotations

from collections.abc import Iterator

from tinytrain.engines.planner import BatchPlan, plan_batches
from tinytrain.executors.base import Started, bounded
from tinytrain.results import RunResult
from tinytrain.spec import RunSpec


def with_engine_note(result: RunResult, plan: BatchPlan) -> RunResult:
    """A result of a vmap cell the plan gave to the sequential engine, with the reason among its tags."""
    reason = plan.fallback_reason.get(result.spec)
    if reason is not None:
        result.runtime["engine_reason"] = reason
    return result


class InProcess:
    """Runs one after another in this process (the default; what every other executor must equal).

    vmap cells train as the plan's sub-batches, one after another; each result is handed on as soon as its
    cell ends, so the sweep's writer logs it while the rest trains.
    """

    def run(self, specs: list[RunSpec], started: Started) -> Iterator[RunResult]:
        if not specs:  # every cell done already: no need for torch
            return
        from tinytrain.engines.sequential import train_safely

        plan = plan_batches(specs)
        for spec in plan.sequential:
            started(spec)
            yield with_engine_note(train_safely(spec), plan)
        if plan.batches:
            from tinytrain.engines.batched import train_batch

            for batch in plan.batches:
                for spec in batch:
                    started(spec)
                yield from train_batch(batch)

    def close(self, abandon: bool = False) -> None:
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
        """Sequential runs one per task; vmap cells as the plan's sub-batches, one in flight per worker (as
        many for each worker), each a task whose results come back when it ends. At the vmap engine's
        runtime (one thread, oneDNN off) a cell's result does not depend on its batch, so splitting changes
        no number. Starting the workers costs about as much as training the default grid on this machine
        (docs/performance.md, executors on the default sweep): it pays off for longer sweeps.
        """
        plan = plan_batches(specs, workers=self.jobs)
        runs = [[spec] for spec in plan.sequential]
        for result in bounded(runs, started, lambda unit: self.pool.submit(_train_each, unit), 2 * self.jobs):
            yield with_engine_note(result, plan)
        yield from bounded(plan.batches, started, lambda batch: self.pool.submit(_train_batch, batch), self.jobs)

    def close(self, abandon: bool = False) -> None:
        """Wait for the runs in progress, or with abandon (their results cannot be written) end them now."""
        if abandon:
            # concurrent.futures has no public way to stop running tasks before Python 3.14
            # (terminate_workers): end the workers, whose results nobody can log any more.
            for process in list((self.pool._processes or {}).values()):
                process.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)


def _train_each(specs: list[RunSpec]) -> list[RunResult]:
    """A worker's task: sequential runs, one after another."""
    from tinytrain.engines.sequential import train_safely

    return [train_safely(spec) for spec in specs]


def _train_batch(specs: list[RunSpec]) -> list[RunResult]:
    """A worker's task: a vmap sub-batch."""
    from tinytrain.engines.batched import train_batch

    return list(train_batch(specs))
