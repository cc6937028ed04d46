"""Where runs execute: in this process, in a local process pool, or on a Dask cluster (see base.py)."""

from __future__ import annotations

from tinytrain.executors.base import EXECUTORS, Executor, ExecutorError, Started
from tinytrain.executors.local import InProcess, ProcessPool

__all__ = ["EXECUTORS", "Executor", "ExecutorError", "InProcess", "ProcessPool", "Started", "make_executor"]


def make_executor(name: str = "inprocess", jobs: int = 1, scheduler: str | None = None) -> Executor:
    if name == "dask":
        from tinytrain.executors.dask_cluster import DaskExecutor

        return DaskExecutor(scheduler=scheduler, workers=max(jobs, 1))
    if name == "pool" or jobs > 1:
        return ProcessPool(jobs)
    return InProcess()
