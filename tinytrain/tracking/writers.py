"""Run writers: more processes that write a sweep's finished runs, so that writing scales with the cores.

A sweep's writer (background.py) opens the sweep, claims its cells, writes the summary and closes it; with
the `writers` setting above 1 it also has run writers beside it, each a process running a Recorder of its
own that writes finished runs (Recorder.write_claimed: the claim's still-holds check, then
Store.finish_run). A claimed cell's result goes to whichever writer, the sweep's own included, has the
fewest results waiting; the sweep's writer is told (HandOver) so that it no longer renews that claim's
lease nor closes its run. Each result is sent once, so each run is written once, in any order. When the
sweep closes, every run writer is drained (Drain: it has written all it was sent and replies with what it
wrote), and its counts and losses are gathered into the sweep's writer (Gather) before the summary.

A run the sweep did not claim (a Dask sweep, --force) was made by the sweep's writer when it started: it
is written there as before.

The same contract as one writer: a killed run writer stops the sweep at once (background.WriterDied); the
runs it was sent and had not written stay RUNNING with the sweep's writer as their owner, so the next sweep
marks them FAILED and trains them again. If the sweep's process dies, each run writer writes what it was
fully sent and exits, and the sweep's writer waits for them before it closes the sweep FAILED.
"""

from __future__ import annotations

import multiprocessing
import queue
from typing import Any

from tinytrain.signals import sigint_deferred
from tinytrain.tracking.background import (
    MAX_RESULTS_IN_FLIGHT,
    Drain,
    Request,
    Stop,
    WriteRun,
    _serve,
    reply_ready,
)
from tinytrain.tracking.contract import TrackingError
from tinytrain.tracking.recorder import RunsWritten


class RunWriter:
    """The sweep's side of one run writer process: its queues and the results it may still take."""

    def __init__(self, context: Any, uri: str):
        self.requests: multiprocessing.Queue = context.Queue()
        self.replies: multiprocessing.Queue = context.Queue()
        self.in_flight = context.BoundedSemaphore(MAX_RESULTS_IN_FLIGHT)
        self.process = context.Process(
            target=_serve, args=(uri, self.requests, self.replies, self.in_flight), name="tinytrain-run-writer"
        )
        self.process.daemon = True
        with sigint_deferred(ignore=True):
            self.process.start()

    def room(self) -> int:
        """How many more results it takes before the sweep waits for it."""
        return self.in_flight.get_value()

    def raise_if_failed(self) -> None:
        reply_ready(self.replies)  # a run writer replies only to Drain: anything before it is an error

    def drain(self) -> tuple[RunsWritten, str | None]:
        """Wait until it has written every result sent to it: what it wrote, and its first error if any."""
        self.requests.put(Request(Drain(), wants_reply=True))
        error = None
        while True:
            try:
                status, value = self.replies.get(timeout=1.0)
            except KeyboardInterrupt:  # what was trained is written
                continue
            except queue.Empty:
                if not self.process.is_alive():
                    raise TrackingError("a tracking run writer process ended unexpectedly") from None
                continue
            if status == "ok":
                return value, error
            error = error or value

    def stop(self) -> None:
        self.requests.put(Request(Stop(), wants_reply=False))


class RunWriters:
    """The run writers of a sweep: started with it, sent claimed results, drained and stopped at its end."""

    def __init__(self, context: Any, uri: str, count: int, pids: Any):
        self.writers = [RunWriter(context, uri) for _ in range(count)]
        for index, writer in enumerate(self.writers):
            pids[index] = writer.process.pid  # the sweep's writer waits for them if the sweep dies

    @property
    def processes(self) -> list[Any]:
        return [writer.process for writer in self.writers]

    def roomiest(self) -> RunWriter:
        return max(self.writers, key=RunWriter.room)

    def send(self, writer: RunWriter, experiment: str, run_id: str, result: Any) -> None:
        """Send a result to a writer that has room (writer.in_flight acquired by the caller)."""
        writer.requests.put(Request(WriteRun(experiment, run_id, result), wants_reply=False))

    def raise_if_failed(self) -> None:
        for writer in self.writers:
            writer.raise_if_failed()

    def drain(self) -> tuple[tuple[RunsWritten, ...], str | None]:
        """Every run writer's written runs, once each has written all it was sent; the first error of any."""
        parts, errors = [], []
        for writer in self.writers:
            part, error = writer.drain()
            parts.append(part)
            errors.append(error)
        return tuple(parts), next((error for error in errors if error), None)

    def stop(self) -> None:
        """Let the run writers go: each writes what it was sent first (a queue keeps its order)."""
        for writer in self.writers:
            if writer.process.is_alive():
                writer.stop()
