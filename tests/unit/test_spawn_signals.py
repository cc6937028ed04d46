"""A Ctrl-C pressed while the sweep spawns its writers is held back, not lost, and never reaches the child."""

import signal
import threading
import time

import pytest

from tinytrain.signals import sigint_deferred


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler, whatever the process running the tests was given (a shell's background
    job starts with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_while_a_writer_is_spawned_reaches_the_sweep_once_the_spawn_is_done(ctrl_c_raises):
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with sigint_deferred(ignore=True):
            # to this thread: a process-directed signal may go to a thread another test left behind
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            time.sleep(0.2)
            reached.append("the spawn went on")
        time.sleep(5)  # not reached: the held-back Ctrl-C is raised as soon as the window closes
    assert reached == ["the spawn went on"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())


def test_a_child_spawned_in_the_window_ignores_ctrl_c_from_its_first_instruction():
    import subprocess
    import sys

    code = "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)"
    with sigint_deferred(ignore=True):
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "True"
