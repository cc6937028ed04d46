"""Every test runs in its own folder with its own SQLite store; a test that leaks an active MLflow run fails.

The helpers the test modules share live here too (free_port, invoke, client, runs_of, children), with the one
way tests call the command line (invoke, or the cli_runner fixture: unexpected exceptions surface) and the
one way they write experiment files (the experiment_file fixture, from keyword arguments or a dict).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

PROJECT_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 120  # seconds for an mlflow server to answer; about 10-20 s on two busy cores


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- servers in a process group of their own (the UI, mlflow server), stopped as a whole


def wait_for_health(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the server did not answer /health within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


def start_in_own_group(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as output:
        return subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the whole process group (the server and its workers), then SIGKILL if it lingers."""
    group = process.pid  # start_new_session: the group id is the leader's pid
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and group_alive(group):
            process.poll()
            time.sleep(0.2)
        if not group_alive(group):
            break
    process.wait(timeout=5)


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def kill_group(process) -> None:
    """SIGKILL a process started in its own group, and every process of the group (its writers too): returns
    once they are all gone."""
    import signal
    import time

    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    while group_alive(process.pid):
        time.sleep(0.1)


class Invoker(CliRunner):
    """click's runner, except that an exception other than SystemExit (click's own exits, exit codes) is raised
    in the test rather than kept in result.exception: a traceback a user would see fails the test as one."""

    def invoke(self, cli, args=None, **options):
        options.setdefault("catch_exceptions", False)
        return super().invoke(cli, args, **options)


def invoke(args: list[str], **options):
    """The tinytrain command in this process, as a user types it (see Invoker)."""
    from tinytrain.cli import cli

    return Invoker().invoke(cli, list(args), **options)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    return "[" + ", ".join(toml_value(item) for item in value) + "]"


def experiment_toml(experiment: Mapping[str, Any]) -> str:
    """An experiment file's TOML from a dict: settings first, then [grid], [optimizers."NAME"], [extra_seeds]."""
    lines = [f"{key} = {toml_value(value)}" for key, value in experiment.items() if not isinstance(value, Mapping)]
    for table, values in experiment.items():
        if not isinstance(values, Mapping):
            continue
        if table == "optimizers":
            for name, variant in values.items():
                lines += ["", f'[optimizers."{name}"]'] + [
                    f"{key} = {toml_value(item)}" for key, item in variant.items()
                ]
        else:
            lines += ["", f"[{table}]"] + [
                f"{json.dumps(str(key))} = {toml_value(item)}" for key, item in values.items()
            ]
    return "\n".join(lines) + "\n"


def client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri)


def runs_of(uri: str, name: str = "e2e") -> list:
    """Every active run of an experiment (none if it does not exist)."""
    experiment = client(uri).get_experiment_by_name(name)
    if experiment is None:
        return []
    return client(uri).search_runs([experiment.experiment_id], max_results=1000)


def children(uri: str, name: str = "e2e") -> list:
    """The runs of grid cells of an experiment (not the sweeps' parent runs)."""
    return [run for run in runs_of(uri, name) if run.data.tags.get("tinytrain.kind") == "run"]


def _user_cache_state() -> list[tuple[str, int]]:
    """What the user's own cache of tinytrain holds (names and modification times), to check it is untouched."""
    folder = Path(os.path.expanduser("~/.cache/tinytrain"))
    if not folder.exists():
        return []
    return sorted((str(path), path.stat().st_mtime_ns) for path in [folder, *folder.rglob("*")])


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory) -> Path:
    """The suite's own cache folder (store templates): nothing of the user's ~/.cache is read or written.

    Set for the whole session, so that module-scoped fixtures (servers, clusters, sweeps they start)
    use it too; at the end, the user's cache must be as it was.
    """
    folder = tmp_path_factory.mktemp("cache")
    before, previous = _user_cache_state(), os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous
    assert _user_cache_state() == before, "a test read or wrote the user's ~/.cache/tinytrain"


@pytest.fixture
def process_groups():
    """Start commands each in a session (process group) of its own; the groups are killed after the test,
    whether it passed or not, so that a failing test leaves no sweep, writer or worker behind."""
    started: list[subprocess.Popen] = []

    def start(command: list[str], **options) -> subprocess.Popen:
        process = subprocess.Popen(command, start_new_session=True, **options)
        started.append(process)
        return process

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=30)


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch, session_cache):
    """chdir to a temporary folder and point MLFLOW_TRACKING_URI at a SQLite store inside it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(session_cache))  # inherited by the processes tests start
    # tables and titles wrap at $COLUMNS (cli/reports.terminal_width): a shell that exports it must not change
    # what a test reads, in this process or in the commands it starts; a test that means a width sets one
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    import sys

    if "mlflow" not in sys.modules:  # the test never used MLflow: nothing of it to put back
        return
    import mlflow

    leaked = mlflow.active_run()
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)  # a test that set the process-wide URI does not leak it to the next one
    if leaked is not None:  # as MLflow's own conftest does: a leak is the test's fault, not quietly mended
        pytest.fail(f"test case unexpectedly leaked a run: {leaked.info.run_id}")


@pytest.fixture
def store_uri(isolated_store) -> str:
    return isolated_store


@pytest.fixture
def experiment_file(tmp_path):
    """Write an experiment file and return its path: from keyword arguments and tables as dicts
    (`experiment_file(name="e2e", steps=3, grid={"optimizer": ["adam"], "seed": [0, 1]})`), a dict of them,
    or, where the text itself is the point (bad TOML, comments), a string. `filename` names the file."""

    def write(text: str | Mapping[str, Any] | None = None, filename: str = "exp.toml", **experiment: Any) -> str:
        if text is None or isinstance(text, Mapping):
            text = experiment_toml({**(text or {}), **experiment})
        path = tmp_path / filename
        path.write_text(text)
        return str(path)

    return write


@pytest.fixture
def cli_runner():
    """The command line's runner for tests that call `cli_runner.invoke(cli, args)` (see Invoker)."""
    return Invoker()


STORE_FIXTURES = {
    "store",
    "store_uri",
    "logged",
    "server",
    "swept",
    "dask_cluster",
    "one_run",
    "postgres",
    "team_server",
}


def pytest_collection_modifyitems(items):
    """Mark the tests that use a store (or a server, a cluster): make mutation runs the others only."""
    for item in items:
        if STORE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.store)


def pytest_configure(config):
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")


# ---- a real PostgreSQL for the team tests (Debian's postgresql package; CI installs it, see .ci/run)


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl), the newest installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda path: int(path.parent.parent.name))
    return found[-1].parent if found else None


class Postgres:
    """A PostgreSQL server of the test session, on 127.0.0.1 and a free port; a database per test."""

    def __init__(self, folder: Path, port: int, bin_folder: Path, as_user: list[str]):
        self.folder, self.port, self.bin, self.as_user = folder, port, bin_folder, as_user
        self.databases = 0

    def run(self, program: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / program), *args], check=True, capture_output=True, timeout=120)

    def new_database(self) -> str:
        """A new empty database; its URL for MLflow (psycopg 3)."""
        self.databases += 1
        name = f"tinytrain_{self.databases}"
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres():
    """PostgreSQL started for the session in a temporary folder (initdb, pg_ctl), stopped at the end.

    The server refuses to run as root: as root it runs as the `postgres` user. Without PostgreSQL the
    tests that need it skip, except under CI=1, where they fail (CI installs it).
    """
    import shutil
    import tempfile

    bin_folder = postgres_bin()
    if bin_folder is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs it with apt-get install postgresql")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("psycopg is not installed: pip install -e '.[postgres]'")
        pytest.skip("psycopg is not installed (pip install -e '.[postgres]')")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="tinytrain-postgres-"))
    if as_user:
        shutil.chown(folder, "postgres")
    port = free_port()
    server = Postgres(folder, port, bin_folder, as_user)
    data = folder / "data"
    server.run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c full_page_writes=off"
    server.run("pg_ctl", "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            server.run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def tinytrain_command() -> str:
    import sys

    return str(Path(sys.executable).with_name("tinytrain"))


@pytest.fixture
def team_server(postgres, tmp_path):
    """`tinytrain server` on a new PostgreSQL database, in its own process group; a function that starts it
    (again, after a test stopped it) and gives its URL. Every group it started is stopped at the end."""
    database, port, started = postgres.new_database(), free_port(), []

    def start(*options: str, env: dict[str, str] | None = None) -> str:
        command = [tinytrain_command(), "server", database, "--artifacts", str(tmp_path / "artifacts")]
        command += ["--port", str(port), *options]
        log = tmp_path / f"server-{len(started)}.log"
        process = start_in_own_group(command, {**os.environ, **(env or {})}, log)
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_for_health(url, process, log)
        return url

    start.processes = started
    start.database = database
    yield start
    for process in started:
        if group_alive(process.pid):
            stop_group(process)
