"""exit_now: end a tinytrain process as sys.exit would, without the interpreter's teardown.

With torch loaded, Python's own finalization (freeing every object of every module) is a large share of a
short command's time, and everything a command writes is written by then. The exit handlers still run
(multiprocessing's children and semaphores, logging, MLflow's) and the streams are flushed; only the freeing
of memory the operating system takes back anyway is skipped. Used by the `tinytrain` command and by the
sweep's writer process.

It does what Python's shutdown does before that teardown, in its order: join the non-daemon threads (and run
the callbacks registered for then, such as concurrent.futures' own), run the atexit handlers, flush.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn


def exit_now(code: int | str | None = 0) -> NoReturn:
    """sys.exit(code) as far as anyone can tell (handlers run, streams flushed), without the teardown."""
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # what Py_FinalizeEx does first: non-daemon threads end their work
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`tinytrain compare | head`) or stream
            stream.flush()
    os._exit(code)
