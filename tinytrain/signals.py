"""sigint_deferred: a Ctrl-C pressed while this process spawns another, held back until the child has started."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def sigint_deferred(ignore: bool = False) -> Iterator[None]:
    """A Ctrl-C pressed while this (main) thread spawns a process is held back, then delivered as if it came
    now: neither process stops half-way through the child's start (which would print the child's traceback).

    SIGINT is blocked in this thread meanwhile: Linux keeps a blocked signal pending, even an ignored one, and
    the child inherits the mask, so one pressed in this window waits in it too until it unblocks it. The
    disposition meanwhile is, with `ignore`, SIG_IGN, which the child inherits and Python keeps (a writer
    process, which must never take a Ctrl-C); otherwise a catcher, so that one delivered to another of this
    process's threads is raised here afterwards as well (a pool worker, which installs its own handler).
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    caught: list[int] = []
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    disposition = signal.SIG_IGN if ignore else (lambda signum, frame: caught.append(signum))
    previous = signal.signal(signal.SIGINT, disposition)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one pending reaches the handler restored, now
        if caught:
            signal.raise_signal(signal.SIGINT)
