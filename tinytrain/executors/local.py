"""Runs on this machine: one after another in this process, or on a local pool of worker processes."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from tinytrain.engines.planner import BatchPlan, plan_batches
from tinytrain.executors.base import Started, bounded
from tinytrain.results import RunResult
from tinytrain.signals import sigint_deferred
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

    def prepare(self, specs: list[RunSpec]) -> None:
        """Import the engines the specs train on, and make torch.optim's first optimizer: about 1.5 s of
        imports for torch and 2 s for torch._dynamo (which an optimizer's first construction imports), done
        while the writer process imports MLflow on the other core instead of after its first answer."""
        if not specs:
            return
        plan = plan_batches(specs)
        if plan.sequential:
            from tinytrain.engines.sequential import warm_up

            warm_up()
        if plan.batches:
            import tinytrain.engines.batched  # noqa: F401

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


# Ctrl-C in a pool: the terminal sends SIGINT to the sweep and to every worker. A task in training stops
# (KeyboardInterrupt, sent back to the sweep, which marks its runs KILLED). A worker that is still starting,
# or waits between tasks, must neither print a traceback nor lose the Ctrl-C and then train a whole task
# while the sweep waits for it: it is spawned with SIGINT blocked (pending, not lost, while Python starts),
# notes a Ctrl-C once it can (_start_worker), and its next task stops before it trains.
_interrupted = False  # a Ctrl-C reached this worker outside a task


def _note_interrupt(signum: int, frame) -> None:
    global _interrupted
    _interrupted = True


def _start_worker() -> None:
    """A worker's start: a Ctrl-C from now on (or one held back since it was spawned) is noted, not raised;
    then one thread each (the spec sets its own count) to avoid oversubscription."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not SIG_IGN (a shell's background job)
        signal.signal(signal.SIGINT, _note_interrupt)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    import torch

    torch.set_num_threads(1)


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """A task of a worker: Ctrl-C stops it, and one noted before it began stops it before it trains."""
    if signal.getsignal(signal.SIGINT) is not _note_interrupt:  # ignored, or not a pool worker
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if _interrupted:
            raise KeyboardInterrupt
        yield
    finally:
        signal.signal(signal.SIGINT, _note_interrupt)


class ProcessPool:
    """A local pool of N worker processes (spawned, so no torch state is forked)."""

    def __init__(self, jobs: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.jobs = jobs
        self.pool = ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker
        )

    def prepare(self, specs: list[RunSpec]) -> None:
        """Nothing here: each worker imports torch as it starts (_start_worker)."""

    def run(self, specs: list[RunSpec], started: Started) -> Iterator[RunResult]:
        """Sequential runs one per task; vmap cells as the plan's sub-batches, one in flight per worker (as
        many for each worker), each a task whose results come back when it ends. At the vmap engine's
        runtime (one thread, oneDNN off) a cell's result does not depend on its batch, so splitting changes
        no number. Starting the workers costs about as much as training the default grid on this machine
        (docs/performance.md, executors on the default sweep): it pays off for longer sweeps.
        """
        plan = plan_batches(specs, workers=self.jobs)
        runs = [[spec] for spec in plan.sequential]
        for result in bounded(runs, started, lambda unit: self._submit(_train_each, unit), 2 * self.jobs):
            yield with_engine_note(result, plan)
        yield from bounded(plan.batches, started, lambda batch: self._submit(_train_batch, batch), self.jobs)

    def _submit(self, task, specs: list[RunSpec]):
        """A task for the pool, which spawns a worker for it when it has none idle: with SIGINT held back."""
        with sigint_deferred():
            return self.pool.submit(task, specs)

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

    with _interruptible():
        return [train_safely(spec) for spec in specs]


def _train_batch(specs: list[RunSpec]) -> list[RunResult]:
    """A worker's task: a vmap sub-batch."""
    from tinytrain.engines.batched import train_batch

    with _interruptible():
        return list(train_batch(specs))
