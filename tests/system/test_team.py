"""A team on one store: sweeps that share a grid (SQLite and PostgreSQL), `tinytrain server` on a real
PostgreSQL, a server exposed off loopback and behind basic auth, and a server that goes away mid-sweep.

Real parts only: sweeps are `tinytrain` processes in process groups of their own, PostgreSQL is Debian's
(started for the session by conftest's `postgres` fixture), the servers are `tinytrain server` processes.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port, group_alive, start_in_own_group, stop_group, tinytrain_command

pytestmark = pytest.mark.slow

NAME = "team"
GRID = f"""name = "{NAME}"
steps = 150
[grid]
optimizer = ["sgd", "adam"]
lr = [0.01, 0.001]
seed = [0, 1, 2]
"""
CELLS = 12


def sweep_command(grid: str, uri: str, *options: str) -> list[str]:
    return [tinytrain_command(), "sweep", grid, "--quiet", "--tracking-uri", uri, *options]


def start_sweeps(process_groups, tmp_path: Path, grid: str, uri: str, count: int, env=None) -> list:
    """`count` sweeps of the same grid started at once, each writing its output to a file."""
    processes = []
    for index in range(count):
        output = (tmp_path / f"sweep-{index}.out").open("w")
        processes.append(
            process_groups(
                sweep_command(grid, uri),
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        )
        processes[-1].output_path = tmp_path / f"sweep-{index}.out"
    return processes


def outputs_when_done(processes, timeout: float = 600) -> list[str]:
    for process in processes:
        assert process.wait(timeout=timeout) == 0, process.output_path.read_text()
    return [process.output_path.read_text() for process in processes]


def every_cell_run(uri: str) -> list:
    """Every run of a grid cell, deleted ones too (a released claim is deleted: it must not stay RUNNING)."""
    import mlflow
    from mlflow.entities import ViewType

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    return [run for run in runs if run.data.tags.get("tinytrain.kind") in ("run", "sweep")]


def assert_each_cell_once(uri: str, cells: int = CELLS) -> None:
    runs = every_cell_run(uri)
    assert not [run.info.run_id for run in runs if run.info.status == "RUNNING"], "a run was left RUNNING"
    finished = [
        run.data.tags["tinytrain.run_key"]
        for run in runs
        if run.data.tags.get("tinytrain.kind") == "run"
        and run.info.status == "FINISHED"
        and run.info.lifecycle_stage == "active"
    ]
    assert len(finished) == len(set(finished)) == cells, sorted(finished)


def trained(output: str) -> int:
    """How many runs a sweep says it trained itself."""
    return int(output.split(" runs: ")[1].split(" trained")[0])


def assert_shared(outputs: list[str], cells: int = CELLS) -> None:
    """Between them the sweeps trained each cell once, and each says what the others did."""
    assert sum(trained(output) for output in outputs) == cells, outputs
    for output in outputs:
        others = cells - trained(output)
        assert f"{others} trained by other sweeps meanwhile" in output or others == 0, output
    assert sum(trained(output) > 0 for output in outputs) >= 2, "only one sweep trained: nothing was shared"


# ---------------------------------------------------------------------------------------------------------
# Sweeps that share a grid


@pytest.mark.parametrize("count", [2, 3])
def test_concurrent_sweeps_on_sqlite_train_each_cell_once(count, store_uri, experiment_file, tmp_path, process_groups):
    grid = experiment_file(GRID)
    outputs = outputs_when_done(start_sweeps(process_groups, tmp_path, grid, store_uri, count))
    assert_each_cell_once(store_uri)
    assert_shared(outputs)


@pytest.mark.parametrize("count", [2, 3])
def test_concurrent_sweeps_on_postgres_train_each_cell_once(
    count, team_server, experiment_file, tmp_path, process_groups
):
    url = team_server()
    grid = experiment_file(GRID)
    outputs = outputs_when_done(start_sweeps(process_groups, tmp_path, grid, url, count))
    assert_each_cell_once(url)
    assert_shared(outputs)


def claimed_runs(uri: str) -> list:
    from tinytrain.tracking.sqlite import query_sqlite

    try:
        return query_sqlite(
            uri,
            """SELECT runs.run_uuid FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid
               AND tags.key = 'tinytrain.lease_until' WHERE runs.status = 'RUNNING'""",
            (),
        )
    except Exception:  # noqa: BLE001 - the store is being created
        return []


def test_a_sweep_killed_among_others_has_its_cells_finished_by_them(
    store_uri, experiment_file, tmp_path, process_groups
):
    """SIGKILL one of two sweeps (its writer too) while it holds a claim: the other sweep takes its cells over
    (their process is gone: at once) and finishes the grid, each cell once, nothing RUNNING after a rerun."""
    grid = experiment_file(GRID.replace("steps = 150", "steps = 400"))
    killed, survivor = start_sweeps(process_groups, tmp_path, grid, store_uri, 2)
    deadline = time.monotonic() + 300
    from tinytrain.tracking import finished_keys_readonly

    while True:
        assert killed.poll() is None and time.monotonic() < deadline, killed.output_path.read_text()
        try:
            if len(finished_keys_readonly(store_uri, NAME)) >= 2 and claimed_runs(store_uri):
                break
        except Exception:  # noqa: BLE001 - the store is being created
            pass
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    (output,) = outputs_when_done([survivor])
    assert "Took over" in output, output
    runs = [run for run in every_cell_run(store_uri) if run.data.tags.get("tinytrain.kind") == "run"]
    keys = [run.data.tags["tinytrain.run_key"] for run in runs if run.info.status == "FINISHED"]
    assert len(keys) == len(set(keys)) == CELLS
    assert_each_cell_once_after_rerun(store_uri, grid)  # the killed sweep's parent run: marked FAILED


def test_a_claim_whose_lease_lapsed_is_taken_over_within_one_lease(
    store_uri, experiment_file, tmp_path, process_groups
):
    """A sweep on another machine claimed a cell and went silent (its owner is another host's, so only the
    lease can tell): two sweeps train the rest, wait for that cell, and one of them takes it over once the
    lease lapses; its claim is FAILED with the reason."""
    from tinytrain.spec import load_experiment
    from tinytrain.tracking import Store

    grid = experiment_file(GRID)
    spec = load_experiment(grid).specs()[-1]
    with Store(store_uri, writer=True) as store:
        experiment_id = store.experiment_id(NAME)
        foreign = {"tinytrain.owner": "another-machine:4242:1"}
        claim = store.claim_cell(experiment_id, None, spec, foreign, 20.0)
    assert claim.state == "won"
    lapses_at = time.time() + 20
    outputs = outputs_when_done(start_sweeps(process_groups, tmp_path, grid, store_uri, 2))
    assert time.time() >= lapses_at  # they waited for it
    assert sum("Took over 1 cell(s)" in output for output in outputs) == 1, outputs
    assert sum(trained(output) for output in outputs) == CELLS
    import mlflow

    lapsed = mlflow.MlflowClient(store_uri).get_run(claim.run_id)
    assert lapsed.info.status == "FAILED" and "lease lapsed" in lapsed.data.tags["tinytrain.error"]
    assert_each_cell_once(store_uri)


def assert_each_cell_once_after_rerun(uri: str, grid: str) -> None:
    done = subprocess.run(sweep_command(grid, uri), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"every cell is done ({CELLS} runs" in done.stdout
    assert_each_cell_once(uri)


def _claim_at_once(uri: str, grid_text: str, barrier, answers) -> None:
    """One process of the race: claim every cell of the grid at the same moment as the others."""
    from tinytrain.spec import load_experiment
    from tinytrain.tracking import Store

    specs = load_experiment("race", text=grid_text).specs()
    with Store(uri, writer=True) as store:
        experiment_id = store.experiment_id(NAME)
        for spec in specs:
            barrier.wait(timeout=120)
            claim = store.claim_cell(experiment_id, None, spec, {}, 60.0)
            answers.put((spec.key, claim.state, claim.run_id))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_claims_made_at_the_same_moment_resolve_to_one(backend, request, store_uri):
    """Three processes claim each of six cells at once (a barrier before each): exactly one wins each
    cell, and the losing claims are ended and deleted."""
    uri = request.getfixturevalue("team_server")() if backend == "postgres" else store_uri
    grid_text = GRID.replace("lr = [0.01, 0.001]", "lr = [0.01]")
    from tinytrain.tracking import Store

    with Store(uri, writer=True) as store:
        store.experiment_id(NAME)  # created once, before the race
    context = multiprocessing.get_context("spawn")
    barrier, answers = context.Barrier(3), context.Queue()
    processes = [context.Process(target=_claim_at_once, args=(uri, grid_text, barrier, answers)) for _ in range(3)]
    for process in processes:
        process.start()
    got = [answers.get(timeout=300) for _ in range(3 * 6)]
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    by_key: dict[str, list[str]] = {}
    for key, state, _run_id in got:
        by_key.setdefault(key, []).append(state)
    assert len(by_key) == 6
    assert all(states.count("won") == 1 for states in by_key.values()), by_key
    runs = every_cell_run(uri)
    running = [run for run in runs if run.info.status == "RUNNING"]
    assert sorted(run.info.run_id for run in running) == sorted(r for _k, s, r in got if s == "won")
    assert all(run.info.lifecycle_stage == "active" for run in running)
    assert all(run.info.lifecycle_stage == "deleted" for run in runs if run.info.status == "KILLED")
    import mlflow

    for run in running:
        mlflow.MlflowClient(uri).set_terminated(run.info.run_id, "FINISHED")


# ---------------------------------------------------------------------------------------------------------
# PostgreSQL behind `tinytrain server`: sweep, resume after SIGKILL, compare, reproduce


def wait_for_two_finished_runs(process, url: str, why_it_ended) -> None:
    """Until the sweep has finished two runs in the store (it must still be running: why_it_ended() says why not)."""
    from tinytrain.tracking import finished_keys_readonly

    deadline = time.monotonic() + 300
    while True:
        assert process.poll() is None, why_it_ended()
        assert time.monotonic() < deadline, "no run finished in time"
        try:
            if len(finished_keys_readonly(url, NAME)) >= 2:
                return
        except Exception:  # noqa: BLE001 - the experiment is being created
            pass
        time.sleep(0.2)


def test_sweep_killed_resumed_compared_and_reproduced_on_postgres(team_server, experiment_file, process_groups):
    url = team_server()
    grid = experiment_file(GRID.replace("steps = 150", "steps = 300"))
    process = process_groups(sweep_command(grid, url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from tinytrain.tracking import finished_keys_readonly

    wait_for_two_finished_runs(process, url, lambda: "the sweep ended before it was killed")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    while group_alive(process.pid):  # its writer too: the next sweep then sees their runs' process gone
        time.sleep(0.1)
    again = subprocess.run(sweep_command(grid, url), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already done" in again.stdout and "Marked FAILED" in again.stdout
    assert_each_cell_once(url)
    compared = subprocess.run(
        [tinytrain_command(), "compare", "--experiment", NAME, "--tracking-uri", url],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert compared.returncode == 0, compared.stderr
    assert "final loss after 300 steps over 3 seeds" in compared.stdout
    run_id = finished_keys_readonly(url, NAME).popitem()[1]
    reproduced = subprocess.run(
        [tinytrain_command(), "reproduce", run_id, "--tracking-uri", url], capture_output=True, text=True, timeout=300
    )
    assert reproduced.returncode == 0, reproduced.stdout + reproduced.stderr


# ---------------------------------------------------------------------------------------------------------
# Safe to expose


def get(url: str, path: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(f"{url}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_off_loopback_needs_allowed_hosts_and_a_listed_host_is_served(team_server, cli_runner):
    from tinytrain.cli import cli

    refused = cli_runner.invoke(cli, ["ui", "--host", "0.0.0.0"])
    assert refused.exit_code == 2 and "--allowed-hosts" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    refused = cli_runner.invoke(cli, ["server", "sqlite:///x.db", "--host", "0.0.0.0"])
    assert refused.exit_code == 2 and "--allowed-hosts" in refused.output
    assert not Path("x.db").exists()
    url = team_server("--host", "0.0.0.0", "--allowed-hosts", "team-server.example,team-server.example:*")
    port = url.rsplit(":", 1)[1]
    api = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert get(url, api, {"Host": f"team-server.example:{port}"}) == 200
    assert get(url, api, {"Host": f"elsewhere.example:{port}"}) == 403


def test_the_exposure_warning_is_printed_unless_basic_auth_is_on(tmp_path):
    from tinytrain.tracking.location import exposure_warning

    assert "without authentication" in exposure_warning("0.0.0.0", "team-server", basic_auth=False)
    assert exposure_warning("0.0.0.0", "team-server", basic_auth=True) is None
    assert exposure_warning("127.0.0.1", None, basic_auth=False) is None


def test_basic_auth_refuses_a_request_without_credentials_and_tinytrain_logs_in(
    team_server, experiment_file, tmp_path, monkeypatch
):
    config = tmp_path / "auth.ini"
    config.write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{tmp_path / 'auth.db'}\n"
        "admin_username = admin\nadmin_password = team-secret-1234\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    url = team_server("--basic-auth", env={"MLFLOW_AUTH_CONFIG_PATH": str(config)})
    assert get(url, "/api/2.0/mlflow/experiments/search?max_results=1") == 401
    grid = experiment_file(GRID.replace("seed = [0, 1, 2]", "seed = [0]").replace("steps = 150", "steps = 5"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    no_login = subprocess.run(sweep_command(grid, url), capture_output=True, text=True, env=env, timeout=300)
    assert no_login.returncode == 1
    assert "401 Unauthorized" in no_login.stderr and "MLFLOW_TRACKING_USERNAME" in no_login.stderr
    assert "Traceback" not in no_login.stderr and len(no_login.stderr.strip().splitlines()) == 1
    login = {**env, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "team-secret-1234"}
    done = subprocess.run(sweep_command(grid, url), capture_output=True, text=True, env=login, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    compared = subprocess.run(
        [tinytrain_command(), "compare", "--experiment", NAME, "--tracking-uri", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert compared.returncode == 1 and "401 Unauthorized" in compared.stderr
    assert len(compared.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------------
# One line for every failure of a server


class _Answers:
    """A tiny HTTP server that answers every request with one status, or never (for the timeout)."""

    def __init__(self, status: int | None):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self._answer()

            def do_POST(self):  # noqa: N802
                self._answer()

            def _answer(self):
                if status is None:
                    time.sleep(60)
                    return
                code = 200 if self.path == "/health" else status
                body = b"OK" if code == 200 else b"refused"  # as a proxy or the auth app answers: not JSON
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (401, "401 Unauthorized"),
        (403, "403 Forbidden"),
        (404, "404 Not Found"),
        (500, "failed with 500"),
        (None, "did not answer"),
        ("refused", "cannot reach"),
    ],
)
@pytest.mark.parametrize("command", ["sweep", "compare", "plot", "reproduce", "run"])
def test_every_server_failure_is_one_line_in_every_command(status, says, command, monkeypatch, tmp_path):
    if status == "refused":
        url, answers = f"http://127.0.0.1:{free_port()}", None
    else:
        answers = _Answers(status)
        url = answers.url
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    args = {
        "sweep": ["sweep", "--set", "steps=1", "--quiet"],
        "compare": ["compare"],
        "plot": ["plot", "--out", str(tmp_path / "p.png")],
        "reproduce": ["reproduce", "0123456789abcdef0123456789abcdef"],
        "run": ["run", "--steps", "1"],
    }[command]
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_TIMEOUT": "2", "MLFLOW_TRACKING_URI": url}
    started = time.monotonic()
    try:
        done = subprocess.run([tinytrain_command(), *args], capture_output=True, text=True, env=env, timeout=120)
    finally:
        if answers is not None:
            answers.close()
    assert done.returncode in (1, 2), done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert says in lines[0], lines[0]
    assert time.monotonic() - started < 60


# ---------------------------------------------------------------------------------------------------------
# The server going away


def test_a_sweep_stops_soon_after_its_server_is_killed_and_completes_once_it_is_back(
    team_server, experiment_file, process_groups, tmp_path
):
    url = team_server()
    grid = experiment_file(GRID.replace("steps = 150", "steps = 300"))
    output = tmp_path / "sweep.out"
    process = process_groups(sweep_command(grid, url), stdout=output.open("w"), stderr=subprocess.STDOUT)
    wait_for_two_finished_runs(process, url, output.read_text)
    (server,) = team_server.processes
    os.killpg(server.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    code = process.wait(timeout=120)
    stopped_after = time.monotonic() - killed_at
    text = output.read_text()
    assert code == 1, text
    assert stopped_after < 45, f"the sweep took {stopped_after:.0f} s to stop"
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    assert "cannot reach the tracking server" in text or "did not answer" in text, text
    team_server()  # the same database, the same port
    again = subprocess.run(sweep_command(grid, url), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_each_cell_once(url)


def test_tinytrain_server_refuses_a_database_it_cannot_use(cli_runner):
    from tinytrain.cli import cli

    for url, says in [("postgres://u@h/db", "postgresql+psycopg://"), ("mysql://u@h/db", "not a database URL")]:
        result = cli_runner.invoke(cli, ["server", url])
        assert result.exit_code == 2 and says in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_tinytrain_server_says_in_one_line_when_the_database_is_down(tmp_path):
    port = free_port()
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/nothing"
    log = tmp_path / "server.log"
    process = start_in_own_group([tinytrain_command(), "server", url, "--port", str(free_port())], os.environ, log)
    try:
        assert process.wait(timeout=180) == 1
    finally:
        stop_group(process)
    text = log.read_text()
    assert "Error: mlflow db upgrade failed" in text and "Traceback" not in text, text
