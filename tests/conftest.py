"""Every test runs in its own folder with its own SQLite store; no test leaks an active MLflow run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """The suite's own cache folder (store templates): nothing of the user's ~/.cache is read or written."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch, session_cache):
    """chdir to a temporary folder and point MLFLOW_TRACKING_URI at a SQLite store inside it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(session_cache))  # inherited by the processes tests start
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    try:
        import mlflow
    except ImportError:
        return
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)  # a Store sets the process-wide URI; the next test has its own store


@pytest.fixture
def store_uri(isolated_store) -> str:
    return isolated_store


@pytest.fixture
def experiment_file(tmp_path):
    """Write a small experiment file and return its path."""

    def write(text: str, name: str = "exp.toml") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


@pytest.fixture
def cli_runner():
    from click.testing import CliRunner

    return CliRunner()


def pytest_configure(config):
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
