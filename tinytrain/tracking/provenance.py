"""Provenance: the environment a run was computed in, and which process writes it.

Every run records the versions, the platform, the git state of tinytrain's own code and its owner
(host:pid:start-time), by which a later sweep tells a run left RUNNING by a killed process from one that
another sweep is still writing.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path

from tinytrain.spec import PROJECT_ROOT


def git_state(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """The commit of tinytrain's own code and whether its tree had uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        if done.returncode:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--", "tinytrain", "pyproject.toml"))
    except (OSError, subprocess.SubprocessError):
        return {"tinytrain.git_commit": "unknown", "tinytrain.git_dirty": "unknown"}
    return {"tinytrain.git_commit": commit, "tinytrain.git_dirty": str(dirty), "mlflow.source.git.commit": commit}


def process_owner() -> str:
    """host:pid:start-time of this process: enough to tell later whether it still runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid())}"


def _process_start(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def owner_is_gone(owner: str) -> bool:
    """True when the process that wrote a RUNNING run is known to be dead (on this host)."""
    try:
        host, pid_text, start = owner.split(":")
        pid = int(pid_text)
    except ValueError:
        return True  # not written by tinytrain's owner scheme: nobody can still be writing it
    if host != socket.gethostname():
        return False  # cannot tell for another machine; leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return start != "?" and _process_start(pid) != start  # the pid was reused by another process


def environment() -> dict[str, str]:
    """Where runs are made; torch's version from its metadata (the same string as torch.__version__), so
    that a sweep with nothing to train never imports torch."""
    from importlib.metadata import version

    import mlflow

    return {
        "tinytrain.python": platform.python_version(),
        "tinytrain.torch": version("torch"),
        "tinytrain.mlflow": mlflow.__version__,
        "tinytrain.platform": platform.platform(),
        "tinytrain.host": socket.gethostname(),
        **git_state(),
    }
