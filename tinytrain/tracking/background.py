"""A Recorder in a process of its own, so that a sweep trains while its store is written.

The sweep's process never imports MLflow: it hands starts and results to a queue and goes on training on
its core, while the writer process imports MLflow, opens the store and logs, on the other core. It stays
the store's single writer. Calls are applied in the order they were made; `close` waits for all of them.
If the sweep's process dies, the writer closes the sweep as FAILED by itself and exits.

The calls travel as small typed messages (Open, RunStarted, RunFinished, ReadForSummary, Close), each of
which knows the Recorder method it stands for: BackgroundRecorder and Recorder are the same SweepRecorder to
the sweep. The sweep's summary (compare table, loss curves, cell runs) is made in the sweep's process, from
the sweep as the writer reads it once every run is written, and logged by the writer: the writer's core is
the one a sweep waits for at its end, while the sweep's own has finished training.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from tinytrain.results import RunResult
from tinytrain.shutdown import exit_now
from tinytrain.signals import sigint_deferred
from tinytrain.spec import Experiment, RunSpec
from tinytrain.tracking.contract import RECORD_NONE, TrackingError
from tinytrain.tracking.location import is_http, server_failure
from tinytrain.tracking.model_files import save_weights
from tinytrain.tracking.recorder import (
    MadeSummary,
    Recorder,
    RunsWritten,
    SummaryMaker,
    SweepCounts,
    error_reason,
    make_summary,
)
from tinytrain.tracking.store import TAKEN, WON, Claim
from tinytrain.tracking.sweep_records import SweepRecord

# ---------------------------------------------------------------------------------------------------------
# The messages


@dataclass(frozen=True)
class Open:
    experiment: Experiment
    specs: list[RunSpec]
    finished: dict[str, str]
    force: bool
    with_parent: bool

    def apply(self, recorder: Recorder) -> None:
        recorder.open(self.experiment, self.specs, self.finished, self.force, self.with_parent)


@dataclass(frozen=True)
class RunStarted:
    spec: RunSpec

    def apply(self, recorder: Recorder) -> None:
        recorder.run_started(self.spec)


@dataclass(frozen=True)
class ClaimCell:
    """Claim a block of cells before they train; the reply is the store's Claim of each (won, taken by another
    sweep, done), in order."""

    specs: tuple[RunSpec, ...]

    def apply(self, recorder: Recorder) -> list[Claim]:
        return recorder.claim_many(list(self.specs))

    def refused(self) -> list[Claim]:
        """The reply when the writer can no longer write: every cell left to others (the sweep then stops)."""
        return [Claim(TAKEN)] * len(self.specs)


@dataclass(frozen=True)
class RunFinished:
    result: RunResult

    def apply(self, recorder: Recorder) -> None:
        recorder.run_finished(self.result)


@dataclass(frozen=True)
class ReadForSummary:
    """Once every run before it is written: the sweep's record if closing with `status` gives a summary."""

    status: str

    def apply(self, recorder: Recorder) -> tuple[SweepRecord | None, str | None]:
        if not recorder.wants_summary(self.status):
            return None, None
        try:
            return recorder.summary_input(), None
        except Exception as error:  # noqa: BLE001 - no summary, and the reason on the parent; the sweep goes on
            return None, error_reason(error)


@dataclass(frozen=True)
class Close:
    status: str
    reason: str | None
    made: MadeSummary | None = None

    def apply(self, recorder: Recorder) -> SweepCounts:
        return recorder.close(self.status, self.reason, self.made)


@dataclass(frozen=True)
class Stop:
    """The sweep has its reply to Close: everything is committed, the writer may go."""


# With several writers (writers.py): a claimed cell's result may go to a run writer instead of RunFinished


@dataclass(frozen=True)
class HandOver:
    """To the sweep's writer: a run writer writes this claimed cell's result (no lease to renew, no run to close)."""

    key: str

    def apply(self, recorder: Recorder) -> None:
        recorder.hand_over(self.key)


@dataclass(frozen=True)
class WriteRun:
    """To a run writer: write a claimed cell's result to its run, if the claim still holds."""

    experiment: str  # its name
    run_id: str
    result: RunResult

    def apply(self, recorder: Recorder) -> None:
        recorder.write_claimed(self.experiment, self.run_id, self.result)


@dataclass(frozen=True)
class Drain:
    """To a run writer, once every result was sent to it: the reply is what it wrote (RunsWritten)."""

    def apply(self, recorder: Recorder) -> RunsWritten:
        return recorder.written()


@dataclass(frozen=True)
class Gather:
    """To the sweep's writer before its summary and close: what the run writers wrote, counted as its own."""

    parts: tuple[RunsWritten, ...]

    def apply(self, recorder: Recorder) -> None:
        for part in self.parts:
            recorder.merge(part)


Message = (
    Open | ClaimCell | RunStarted | RunFinished | ReadForSummary | Close | Stop | HandOver | WriteRun | Drain | Gather
)


@dataclass(frozen=True)
class Request:
    message: Message
    wants_reply: bool


# ---------------------------------------------------------------------------------------------------------
# The writer process


def _serve(
    uri: str,
    requests: multiprocessing.Queue,
    replies: multiprocessing.Queue,
    in_flight: Any = None,
    run_writers: Any = None,
) -> None:
    """A writer process: apply each message to a Recorder; report the first error and stop writing.

    The sweep's writer and its run writers (writers.py) alike; `run_writers` (the sweep's writer's only)
    holds the run writers' pids, whose end it waits for before it closes an orphaned sweep.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the sweep's to handle: it sends Close(KILLED)
    recorder = Recorder(uri)  # no SummaryMaker: the sweep's process makes the summary (ReadForSummary)
    state = {"failed": False, "waiting_since": None}
    lock = threading.Lock()  # held while a message is applied
    siblings = list(run_writers) if run_writers is not None else []
    threading.Thread(target=_close_when_orphaned, args=(recorder, state, lock, siblings), daemon=True).start()
    while True:
        if state["waiting_since"] is None:
            state["waiting_since"] = time.monotonic()
        _renew_leases(recorder, state, lock, replies)
        try:
            request: Request = requests.get(timeout=0.25)
        except queue.Empty:
            continue
        except Exception as error:  # noqa: BLE001 - a message cut short, or that cannot be read
            if not multiprocessing.parent_process().is_alive():
                time.sleep(3600)  # the sweep died while sending: the watchdog closes and exits
            state["failed"] = True
            replies.put(("error", f"cannot read a message from the sweep: {error_reason(error)}"))
            continue
        state["waiting_since"] = None
        with lock:
            _apply(request, recorder, state, replies)
        if in_flight is not None and isinstance(request.message, RunFinished | WriteRun):
            in_flight.release()  # room for one more result


def _apply(request: Request, recorder: Recorder, state: dict, replies: multiprocessing.Queue) -> None:
    message = request.message
    if isinstance(message, Stop):
        _report_usage(recorder, state)
        exit_now(0)  # without the second it takes to tear down MLflow and torch
    if state["failed"] and not isinstance(message, Close | Drain):
        if isinstance(message, ClaimCell):  # answered all the same: the sweep reads its claims in order
            replies.put(("ok", message.refused()))
        return  # the sweep learns of the failure from the error sent first
    if isinstance(message, Close) and state.get("unreachable"):
        # every write would wait out MLflow's retries again: the runs left RUNNING are marked FAILED by
        # the next sweep (their process is gone) or taken over when their lease lapses
        replies.put(("ok", recorder.counts))
        return
    try:
        result = message.apply(recorder)
    except Exception as error:  # noqa: BLE001 - reported to the sweep, which turns it into a message
        _failed(error, recorder, state, replies)
        if isinstance(message, ClaimCell):  # after the error, the claim's own answer (see claims_reply)
            replies.put(("ok", message.refused()))
        return
    if isinstance(message, Close | Drain):  # its last work: the sweep may exit as soon as it has the reply
        _report_usage(recorder, state)
    if request.wants_reply:
        replies.put(("ok", result))


def _renew_leases(recorder: Recorder, state: dict, lock: threading.Lock, replies: multiprocessing.Queue) -> None:
    """Keep the claims this sweep holds while their cells train (a lapsed one is another sweep's to take)."""
    if state["failed"] or recorder.store is None:
        return
    with lock:
        try:
            recorder.renew_leases()
        except Exception as error:  # noqa: BLE001 - the store is gone: as any failed write
            _failed(error, recorder, state, replies)


def _failed(error: Exception, recorder: Recorder, state: dict, replies: multiprocessing.Queue) -> None:
    """Stop writing, and tell the sweep why in one line (a server that went away says so, and what to do)."""
    line = server_failure(error, recorder.uri if is_http(recorder.uri) else None)
    state["failed"] = True
    state["unreachable"] = line is not None and ("cannot reach" in line or "did not answer" in line)
    replies.put(("error", line or error_reason(error)))


MAX_RESULTS_IN_FLIGHT = 32  # results sent to the writer and not yet written (about 250 KB of weights each)

# Benchmarks set it to a file path: each writer appends a line of its CPU seconds, peak RSS and which of the
# heavy packages it imported, before its last reply (the sweep does not wait for its writers' exit, so no
# rusage of the sweep's process tree counts them, and a writer still running when the sweep exits is cut short).
USAGE_ENV = "TINYTRAIN_WRITER_USAGE"


def _report_usage(recorder: Recorder, state: dict) -> None:
    """Once, before the writer's last reply (Close, Drain) or at its Stop: the sweep does not wait for it."""
    path = os.environ.get(USAGE_ENV)
    if path and not state.get("usage_reported"):
        state["usage_reported"] = True
        import json
        import resource
        import sys

        usage = resource.getrusage(resource.RUSAGE_SELF)
        with open(path, "a") as file:
            file.write(
                json.dumps(
                    {
                        "user": usage.ru_utime,
                        "system": usage.ru_stime,
                        "max_rss_mib": usage.ru_maxrss / 1024,
                        "runs_written": len(recorder.counts.run_ids) - recorder.gathered,
                        "imported": sorted(
                            name for name in ("torch", "mlflow.pytorch", "matplotlib") if name in sys.modules
                        ),
                    }
                )
                + "\n"
            )


def _close_when_orphaned(
    recorder: Recorder, state: dict, lock: threading.Lock, siblings: list[int], idle_seconds: float = 2.0
) -> None:
    """If the sweep's process dies, write what it fully sent, then close what it left open as FAILED.

    Runs beside the message loop because a process killed while sending leaves a half message in the
    queue, on which the loop would wait for ever. The sweep's writer closes the sweep once its run writers
    (`siblings`) have written what they were sent and ended; a run writer has no run of its own open.
    """
    parent = multiprocessing.parent_process()
    while True:
        time.sleep(0.5)
        if parent is None or parent.is_alive():
            continue
        waiting_since = state["waiting_since"]
        if waiting_since is None or time.monotonic() - waiting_since < idle_seconds:
            continue  # still writing what was sent before the sweep died
        deadline = time.monotonic() + 120
        while any(_running(pid) for pid in siblings) and time.monotonic() < deadline:
            time.sleep(0.1)
        with lock:
            if not state["failed"] and recorder.store is not None:
                recorder.close("FAILED", reason="the sweep's process ended while it ran")
        os._exit(0)


def _running(pid: int) -> bool:
    """Whether a process runs (a zombie does not: its parent, the sweep, is gone and nobody may reap it)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _for_the_writer(result: RunResult) -> RunResult:
    """A result whose weights travel as the bytes of their files (model_files.SavedWeights).

    Saved here, where torch already is, so that the writer never imports it; with record = none the writer
    keeps no weights, so none are saved nor sent. Bytes also keep the message whole by itself: torch makes
    tensors in a multiprocessing queue share memory through file descriptors that the sending process serves,
    and if it died the writer could not read the results already sent.
    """
    if result.spec.record == RECORD_NONE:
        return dataclasses.replace(result, final_weights=None, checkpoints={})

    def saved(weights):
        return None if weights is None else save_weights(weights)

    return dataclasses.replace(
        result,
        final_weights=saved(result.final_weights),
        checkpoints={step: saved(w) for step, w in result.checkpoints.items()},
    )


def reply_ready(replies: multiprocessing.Queue) -> tuple[bool, Any]:
    """A writer's reply if one is waiting (True, value), else (False, None); an error it reported is raised."""
    try:
        status, value = replies.get_nowait()
    except queue.Empty:
        return False, None
    if status == "error":
        raise TrackingError(f"writing to the store failed: {value}")
    return True, value


# ---------------------------------------------------------------------------------------------------------
# The sweep's side

WRITER_DIED_SIGNAL = signal.SIGUSR1  # how the watcher wakes the sweep's main thread, wherever it waits


class WriterDied(TrackingError):
    """The writer process ended before the sweep closed it: nothing more can be written."""


class BackgroundRecorder:
    """A SweepRecorder whose calls are carried out by a Recorder in a writer process.

    A watcher thread waits for the writer's end: if it dies before the sweep closes it, the sweep's main
    thread gets WriterDied at once (through a signal, which also wakes it from a wait on a pool or a
    cluster), rather than training on for nothing. The runs the writer left open keep its owner tag, so
    the next sweep marks them FAILED (Store.recover_abandoned) and trains their cells again.
    """

    def __init__(self, uri: str, summary: SummaryMaker | None = None, writers: int = 1):
        self.summary = summary  # made here at the end (see close), logged by the writer
        context = multiprocessing.get_context("spawn")
        self.requests: multiprocessing.Queue = context.Queue()
        self.replies: multiprocessing.Queue = context.Queue()
        # Results the writer has not yet written wait in this process's queue buffer, weights and all; where
        # training outpaces the writer (short runs) they would pile up: a 10,000-run sweep of 10-step runs
        # grew past 1 GB. At most MAX_RESULTS_IN_FLIGHT are sent ahead; then the sweep waits for the writer.
        self.in_flight = context.BoundedSemaphore(MAX_RESULTS_IN_FLIGHT)
        pids = context.Array("i", max(writers - 1, 0), lock=False)  # the run writers', filled once started
        self.process = context.Process(
            target=_serve,
            args=(uri, self.requests, self.replies, self.in_flight, pids),
            name="tinytrain-writer",
            daemon=True,
        )
        with sigint_deferred(
            ignore=True
        ):  # from its first instruction: Ctrl-C to the group must not kill it mid-import
            self.process.start()
        self.run_writers = None  # more processes writing finished runs (writers.py), with `writers` > 1
        if writers > 1:
            from tinytrain.tracking.writers import RunWriters

            self.run_writers = RunWriters(context, uri, writers - 1, pids)
        self.experiment = ""  # its name, for the run writers
        self.claims_sent: collections.deque[list[RunSpec]] = collections.deque()  # whose answers are not read yet
        self.claimed_runs: dict[str, str] = {}  # key -> run id of the cells this sweep claimed, until recorded
        self.counts: SweepCounts | None = None
        self.kept: collections.deque = collections.deque()  # replies read early (raise_if_failed), in order
        self.claims_waiting = 0  # claims sent whose answer was not read
        self.died: WriterDied | None = None
        self._closing = False
        self._previous_handler = None
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(WRITER_DIED_SIGNAL, self._on_writer_died)
        threading.Thread(target=self._watch, name="tinytrain-writer-watch", daemon=True).start()

    @property
    def processes(self) -> list[Any]:
        """The writer processes: the sweep's writer, then its run writers."""
        return [self.process, *(self.run_writers.processes if self.run_writers else [])]

    def _watch(self) -> None:
        from multiprocessing.connection import wait

        ended = wait([process.sentinel for process in self.processes])
        if self._closing:
            return
        process = next(process for process in self.processes if process.sentinel in ended)
        process.join(1)
        code = process.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        self.died = WriterDied(
            f"the tracking writer process (pid {process.pid}) died ({how}): the sweep stopped; run the same "
            "command again, it marks the runs left open FAILED and trains what is missing"
        )
        if self._previous_handler is not None:
            signal.pthread_kill(threading.main_thread().ident, WRITER_DIED_SIGNAL)

    def _on_writer_died(self, signum, frame) -> None:
        if self.died is not None and not self._closing:
            raise self.died

    def _restore_signal(self) -> None:
        if self._previous_handler is not None:
            signal.signal(WRITER_DIED_SIGNAL, self._previous_handler)
            self._previous_handler = None

    def _send(self, message: Message) -> None:
        if self.died is not None:
            raise self.died
        self._raise_if_any_failed()
        self.requests.put(Request(message, wants_reply=False))

    def _call(self, message: Message) -> Any:
        """Send a message and wait for its reply. Ctrl-C does not stop the wait: what was trained is written."""
        self.requests.put(Request(message, wants_reply=True))
        return self._reply()

    def _reply(self, interruptible: bool = False) -> Any:
        """The reply to the oldest message sent that wants one and whose reply was not read yet. Ctrl-C does
        not stop the wait unless `interruptible` (a claim's: its reply is then read when the sweep closes)."""
        if self.kept:
            return self.kept.popleft()
        while True:
            try:
                status, value = self.replies.get(timeout=1.0)
            except KeyboardInterrupt:
                if interruptible:
                    raise
                continue
            except queue.Empty:
                if not self.process.is_alive():
                    raise TrackingError("the tracking writer process ended unexpectedly") from None
                continue
            if status == "error":
                raise TrackingError(f"writing to the store failed: {value}")
            return value

    def raise_if_failed(self) -> None:
        """Surface a writer error as soon as it is known, not only at the end of the sweep."""
        replied, value = reply_ready(self.replies)
        if replied:
            self.kept.append(value)  # the answer to a claim sent ahead: _reply gives it when asked

    def _raise_if_any_failed(self) -> None:
        self.raise_if_failed()
        if self.run_writers:
            self.run_writers.raise_if_failed()

    def open(
        self,
        experiment: Experiment,
        specs: list[RunSpec],
        finished: dict[str, str],
        force: bool = False,
        with_parent: bool = True,
    ) -> None:
        self.experiment = experiment.name
        self._send(Open(experiment, specs, finished, force, with_parent))

    def claim(self, spec: RunSpec) -> Claim:
        self.send_claims([spec])
        return self.claims_reply()[0]

    def send_claims(self, specs: list[RunSpec]) -> None:
        if self.died is not None:
            raise self.died
        self.raise_if_failed()
        self.requests.put(Request(ClaimCell(tuple(specs)), wants_reply=True))
        self.claims_waiting += 1
        self.claims_sent.append(list(specs))

    def claims_reply(self) -> list[Claim]:
        """The answers to the oldest block of claims sent and not yet read."""
        claims = self._reply(interruptible=True)  # an error read here is an earlier write's: the answer comes
        self.claims_waiting -= 1
        for spec, claim in zip(self.claims_sent.popleft(), claims, strict=True):
            if claim.state == WON and claim.run_id:
                self.claimed_runs[spec.key] = claim.run_id  # its result may go to any writer
        return claims

    def run_started(self, spec: RunSpec) -> None:
        self._send(RunStarted(spec))

    def run_finished(self, result: RunResult) -> None:
        """Hand a result to the writer with the most room: a claimed cell's to any writer, others to the sweep's
        writer (which made their runs)."""
        run_id = self.claimed_runs.pop(result.spec.key, None)
        writer = None
        if self.run_writers and run_id is not None:
            writer = self.run_writers.roomiest()
            if writer.room() < self.in_flight.get_value():
                writer = None  # the sweep's writer has more room (on a tie, it is left to its claims)
        in_flight, process = (self.in_flight, self.process) if writer is None else (writer.in_flight, writer.process)
        while not in_flight.acquire(timeout=1.0):  # the writer is behind: wait for it
            self._raise_if_any_failed()
            if not process.is_alive():
                raise TrackingError("the tracking writer process ended unexpectedly")
        if writer is None:
            self._send(RunFinished(_for_the_writer(result)))
            return
        self._send(HandOver(result.spec.key))
        self.run_writers.send(writer, self.experiment, run_id, _for_the_writer(result))

    def close(self, status: str = "FINISHED", reason: str | None = None) -> SweepCounts:
        """Wait until everything sent is written and the sweep is closed; then let the writer go.

        Once close has answered, every write is committed: the writer's own exit is not waited for.
        A writer that died has nothing to close: its error is raised again.
        """
        self._closing = True
        self._restore_signal()
        if self.died is not None:
            self._stop_after_death()
            raise self.died
        failed = None  # a run writer's error: the sweep closes FAILED with it, then it is raised
        try:
            while self.claims_waiting:  # claims sent ahead of an interruption: their runs are closed below
                self.claims_reply()
            if self.run_writers:
                parts, failed = self.run_writers.drain()
                self.requests.put(Request(Gather(parts), wants_reply=False))
                if failed and status == "FINISHED":
                    status, reason = "FAILED", reason or failed
            made = self._made_summary(status) if self.summary is not None and status == "FINISHED" else None
            self.counts = self._call(Close(status, reason, made))
        finally:
            self.requests.put(Request(Stop(), wants_reply=False))
            if self.run_writers:
                self.run_writers.stop()
        if failed:
            raise TrackingError(f"writing to the store failed: {failed}")
        return self.counts

    def _stop_after_death(self) -> None:
        """A writer died: the others write what they were sent and exit. What is left open (the sweep, its
        claims, the runs the dead one was sent) stays RUNNING, owned by the sweep's writer, which is gone:
        the next sweep marks it FAILED and trains those cells again."""
        if self.run_writers:
            self.run_writers.stop()
        if self.process.is_alive():
            self.requests.put(Request(Stop(), wants_reply=False))
        queues = [self.requests, *(writer.requests for writer in self.run_writers.writers)] if self.run_writers else []
        for process, requests in zip(self.processes, queues or [self.requests], strict=True):
            process.join(30)  # daemons: this process's exit would cut them short
            if not process.is_alive():  # what it was sent and never read must not hold this process's exit
                requests.cancel_join_thread()

    def _made_summary(self, status: str) -> MadeSummary | None:
        """The sweep's summary, made here from the record the writer reads once every run is written (None
        when the sweep gets none); the plotting and statistics imports load while the writer finishes the
        runs still queued. Ctrl-C now, with every run written, leaves the summary out and closes the sweep."""
        self.requests.put(Request(ReadForSummary(status), wants_reply=True))
        replied = False
        try:
            self.summary.warm_up()
            record, error = self._reply()
            replied = True
            if error is not None:
                return MadeSummary(error=error)
            return None if record is None else make_summary(self.summary, record)
        except (KeyboardInterrupt, Exception) as error:  # noqa: BLE001 - the runs are written: close the sweep
            if not replied:
                self._reply()  # its reply must not be taken for Close's
            if isinstance(error, KeyboardInterrupt):
                return MadeSummary(error="KeyboardInterrupt: Ctrl-C while the summary was made")
            return MadeSummary(error=error_reason(error))
