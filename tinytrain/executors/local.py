"""Runs on this machine: one after another in this process, or on a local pool of worker processes."""

from __future__ import annotations

from collections.abc import Iterator

from tinytrain.executors.base import Started, bounded
from tinytrain.results import RunResult
from tinytrain.spec import RunSpec


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
        """Sequential runs one per task; vmap cells as one batch per worker, dealt round robin so that each
        batch mixes the update rules alike. At the vmap engine's runtime (one thread, oneDNN off) a cell's
        result does not depend on its batch, so splitting changes no number. Once the workers run, two
        batches on two cores train the default grid in 1.3 s against 2.2 s for one batch; starting the
        workers costs more than that at this size, so it pays off for longer sweeps (README, Performance).
        """
        runs = [[spec] for spec in specs if spec.engine != "vmap"]
        yield from bounded(runs, started, lambda unit: self.pool.submit(_train_each, unit), 2 * self.jobs)
        batched = [spec for spec in specs if spec.engine == "vmap"]
        batches = [batched[start::self.jobs] for start in range(min(self.jobs, len(batched)))]
        yield from bounded(batches, started, lambda batch: self.pool.submit(_train_batch, batch), self.jobs)

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
    from tinytrain.train import train_safely

    return [train_safely(spec) for spec in specs]


def _train_batch(specs: list[RunSpec]) -> list[RunResult]:
    """A worker's task for a vmap batch."""
    from tinytrain.vmap import train_batch

    return train_batch(specs)
