"""A Recorder in a process of its own, so that a sweep trains while its store is written.

The sweep's process never imports MLflow: it hands starts and results to a queue and goes on training on
its core, while the writer process imports MLflow, opens the store and logs, on the other core. It stays
the store's single writer. Calls are applied in the order they were made; `close` waits for all of them.
If the sweep's process dies, the writer closes the sweep as FAILED by itself and exits.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
from typing import Any

from tinytrain.shutdown import exit_now
from tinytrain.tracking import TrackingError

_STOP = "__stop__"


def _serve(uri: str, requests: multiprocessing.Queue, replies: multiprocessing.Queue) -> None:
    """The writer process: apply each call to a Recorder; report the first error and stop writing."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the sweep's to handle: it sends close(KILLED)
    _use_memory_for_temporary_files()
    from tinytrain.tracking import Recorder

    recorder = Recorder(uri)
    state = {"failed": False, "waiting_since": None}
    lock = threading.Lock()  # held while a call is applied
    threading.Thread(target=_close_when_orphaned, args=(recorder, state, lock), daemon=True).start()
    warmed_up = False
    while True:
        if state["waiting_since"] is None:
            state["waiting_since"] = time.monotonic()
        try:
            name, args, wants_reply = requests.get(timeout=0.25)
        except queue.Empty:
            if not warmed_up:  # idle while the sweep trains: load what the closing summary needs now
                _warm_up_summary()
                warmed_up = True
            continue
        except Exception as error:  # noqa: BLE001 - a message cut short, or that cannot be read
            if not multiprocessing.parent_process().is_alive():
                time.sleep(3600)  # the sweep died while sending: the watchdog closes and exits
            state["failed"] = True
            replies.put(("error", f"cannot read a message from the sweep: {type(error).__name__}: {error}"))
            continue
        state["waiting_since"] = None
        with lock:
            if name == _STOP:  # the sweep has its reply to close: everything is committed
                exit_now(0)  # without the second it takes to tear down MLflow and torch
            if state["failed"] and name != "close":
                continue
            try:
                result = getattr(recorder, name)(*args)
            except Exception as error:  # noqa: BLE001 - reported to the sweep, which turns it into a message
                state["failed"] = True
                replies.put(("error", f"{type(error).__name__}: {error}"))
                continue
            if wants_reply:
                replies.put(("ok", result))


def _close_when_orphaned(recorder, state: dict, lock: threading.Lock, idle_seconds: float = 2.0) -> None:
    """If the sweep's process dies, write what it fully sent, then close what it left open as FAILED.

    Runs beside the call loop because a process killed while sending leaves a half message in the
    queue, on which the loop would wait for ever.
    """
    parent = multiprocessing.parent_process()
    while True:
        time.sleep(0.5)
        if parent is None or parent.is_alive():
            continue
        waiting_since = state["waiting_since"]
        if waiting_since is None or time.monotonic() - waiting_since < idle_seconds:
            continue  # still writing what was sent before the sweep died
        with lock:
            if not state["failed"] and recorder.store is not None:
                recorder.close("FAILED", reason="the sweep's process ended while it ran")
        os._exit(0)


def _warm_up_summary() -> None:
    """Import the plotting stack ahead of the sweep's end, where it would add to the sweep's wall time."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401

    import tinytrain.report  # noqa: F401


def _use_memory_for_temporary_files() -> None:
    """MLflow stages every model in a temporary folder; on tmpfs that costs no disk metadata writes."""
    import os
    import tempfile

    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        tempfile.tempdir = "/dev/shm"


def _without_shared_tensors(result):
    """A result whose weights are copied into the message itself.

    torch makes tensors in a multiprocessing queue share memory through file descriptors that the
    sending process serves: if it dies, the writer could not read the results it had already sent.
    """
    import dataclasses

    def copied(weights):
        return None if weights is None else {name: tensor.clone().numpy() for name, tensor in weights.items()}

    return dataclasses.replace(result, final_weights=copied(result.final_weights),
                               checkpoints={step: copied(w) for step, w in result.checkpoints.items()})


class BackgroundRecorder:
    """The Recorder interface, its calls carried out in a writer process (see tracking.Recorder)."""

    def __init__(self, uri: str):
        context = multiprocessing.get_context("spawn")
        self.requests: multiprocessing.Queue = context.Queue()
        self.replies: multiprocessing.Queue = context.Queue()
        self.process = context.Process(target=_serve, args=(uri, self.requests, self.replies),
                                       name="tinytrain-writer", daemon=True)
        self.process.start()
        self.counts: Any = None

    def _send(self, name: str, *args: Any) -> None:
        self.raise_if_failed()
        self.requests.put((name, args, False))

    def _call(self, name: str, *args: Any) -> Any:
        """Send a call and wait for its reply. Ctrl-C does not stop the wait: what was trained is written."""
        self.requests.put((name, args, True))
        while True:
            try:
                status, value = self.replies.get(timeout=1.0)
            except KeyboardInterrupt:
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
        try:
            status, value = self.replies.get_nowait()
        except queue.Empty:
            return
        if status == "error":
            raise TrackingError(f"writing to the store failed: {value}")

    def open(self, experiment, specs, finished: dict[str, str], force: bool = False,
             with_parent: bool = True) -> None:
        self._send("open", experiment, specs, finished, force, with_parent)

    def run_started(self, spec) -> None:
        self._send("run_started", spec)

    def run_finished(self, result) -> None:
        self._send("run_finished", _without_shared_tensors(result))

    def close(self, status: str = "FINISHED"):
        """Wait until everything sent is written and the sweep is closed; then let the writer go.

        Once close has answered, every write is committed: the writer's own exit is not waited for.
        """
        try:
            self.counts = self._call("close", status)
            return self.counts
        finally:
            self.requests.put((_STOP, (), False))
