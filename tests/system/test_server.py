"""Logging to a real `mlflow server` over HTTP: what a sweep writes reads back through the REST API, its
checkpoints load, and compare, plot and the sweep summary give what they give on the embedded SQLite store.
Also `tinytrain ui` (what `make ui` and `make server` run) starts, answers and stops without leftovers.

One server per module (it takes 10-20 s to start here), on a free loopback port, in its own process group
that the fixture kills at teardown."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port, group_alive, invoke, start_in_own_group, stop_group, wait_for_health
from tinytrain.reports import summary
from tinytrain.tracking import resolve_tracking_uri, server_command

pytestmark = pytest.mark.slow

NAME = "server-e2e"
GRID = f"""# tinytrain sweep grid.toml
name = "{NAME}"
steps = 3
[grid]
optimizer = ["sgd", "adam"]
lr = [0.01, 1000.0]   # 1000 diverges: no checkpoint
seed = [0, 1]
"""


def rest(url: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return json.load(response)


def sweep_into(uri: str, grid: Path) -> str:
    result = invoke(["sweep", str(grid), "--quiet", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "View run" not in result.output  # MLflow's per-run links stay out of the summary
    return result.output.split("(sweep run ")[1].split(")")[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` as `make server` runs it (server_command), on a store of its own."""
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    command, env = server_command(resolve_tracking_uri(str(folder / "mlruns" / "mlflow.db")), port=port)
    log = folder / "server.log"
    process = start_in_own_group(command, env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, log)
        yield {"url": url, "folder": folder}
    finally:
        stop_group(process)
        assert not group_alive(process.pid)


@pytest.fixture(scope="module")
def swept(server, tmp_path_factory):
    """The same small sweep logged over HTTP to the server and into an embedded SQLite store."""
    folder = tmp_path_factory.mktemp("swept")
    grid = folder / "grid.toml"
    grid.write_text(GRID)
    sqlite_uri = resolve_tracking_uri(str(folder / "mlruns" / "mlflow.db"))
    return {
        "http": sweep_into(server["url"], grid),
        "sqlite": sweep_into(sqlite_uri, grid),
        "sqlite_uri": sqlite_uri,
        "url": server["url"],
        "server_folder": server["folder"],
    }


@pytest.fixture
def http_tracking(swept):
    """The fluent MLflow API (mlflow.pytorch.load_model) pointed at the server for one test."""
    import mlflow

    mlflow.set_tracking_uri(swept["url"])
    return swept["url"]


def experiment_id(url: str) -> str:
    return rest(url, f"experiments/get-by-name?experiment_name={NAME}")["experiment"]["experiment_id"]


def search(url: str, filter_string: str) -> list[dict]:
    body = {"experiment_ids": [experiment_id(url)], "filter": filter_string, "max_results": 1000}
    return rest(url, "runs/search", body).get("runs", [])


def tags_of(run: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}


def params_of(run: dict) -> dict[str, str]:
    return {param["key"]: param["value"] for param in run["data"].get("params", [])}


def metrics_of(run: dict) -> dict[str, float]:
    return {metric["key"]: metric["value"] for metric in run["data"].get("metrics", [])}


def test_a_sweep_over_http_reads_back_through_the_rest_api(swept):
    url = swept["url"]
    runs = search(url, "tags.`tinytrain.kind` = 'run'")
    assert len(runs) == 8
    assert {tags_of(run)["mlflow.parentRunId"] for run in runs} == {swept["http"]}
    diverged = [run for run in runs if tags_of(run)["tinytrain.outcome"] == "diverged"]
    assert len(diverged) == 4 and {params_of(run)["lr"] for run in diverged} == {"1000.0"}
    for run in runs:
        run_id = run["info"]["run_id"]
        history = rest(url, f"metrics/get-history?run_id={run_id}&metric_key=loss")["metrics"]
        steps = sorted(metric["step"] for metric in history)
        metrics = metrics_of(run)
        if tags_of(run)["tinytrain.outcome"] == "finished":
            assert steps == [0, 1, 2, 3]
            final = next(metric["value"] for metric in history if metric["step"] == 3)
            assert final == metrics["final_loss"]
        assert steps[0] == 0 and metrics["initial_loss"] == min(history, key=lambda m: m["step"])["value"]


def test_the_checkpoint_loads_over_http_and_gives_final_loss_again(swept, http_tracking):
    import mlflow.pytorch

    from tinytrain.engines.sequential import configure_runtime, evaluate

    converged = search(swept["url"], "tags.`tinytrain.outcome` = 'finished'")
    assert len(converged) == 4
    for run in converged[:2]:
        params = params_of(run)
        model = run["info"]["run_name"].replace(".", "_")  # the LoggedModel is named after its run
        net = mlflow.pytorch.load_model(f"runs:/{run['info']['run_id']}/{model}")
        configure_runtime(int(params["threads"]), params["mkldnn"] == "True")  # as the run trained
        loss = evaluate(net.state_dict(), int(params["data_seed"]), int(params["target_index"]))
        assert loss == metrics_of(run)["final_loss"]


def test_the_checkpoint_is_a_logged_model_of_the_runs_own_experiment(swept):
    body = {"experiment_ids": [experiment_id(swept["url"])], "max_results": 100}
    models = rest(swept["url"], "logged-models/search", body).get("models", [])
    sources = {model["info"]["source_run_id"] for model in models}
    converged = search(swept["url"], "tags.`tinytrain.outcome` = 'finished'")
    assert sources == {run["info"]["run_id"] for run in converged}


def test_compare_over_http_gives_the_same_table_as_on_sqlite(swept):
    outputs = {}
    for store in ("http", "sqlite"):
        uri = swept["url"] if store == "http" else swept["sqlite_uri"]
        for output_format in ("table", "csv", "json"):
            args = ["compare", "--experiment", NAME, "--format", output_format, "--tracking-uri", uri]
            result = invoke(args)
            assert result.exit_code == 0, result.output
            outputs[store, output_format] = result.output
    http_csv, sqlite_csv = outputs["http", "csv"].splitlines(), outputs["sqlite", "csv"].splitlines()
    assert http_csv[0] == f"# {NAME}: sweep {swept['http']}, final loss after 3 steps over 2 seeds"
    assert http_csv[1:] == sqlite_csv[1:]  # the title line names each sweep's own parent run
    assert json.loads(outputs["http", "json"])["rows"] == json.loads(outputs["sqlite", "json"])["rows"]
    http_table, sqlite_table = outputs["http", "table"].splitlines(), outputs["sqlite", "table"].splitlines()
    assert http_table[0] == f"{NAME}: sweep {swept['http']}, final loss after 3 steps over 2 seeds"
    assert http_table[1:] == sqlite_table[1:]  # the first line names each sweep's own parent run


def test_plot_and_the_sweep_summary_over_http(swept, tmp_path):
    out = tmp_path / "curves.png"
    result = invoke(["plot", "--experiment", NAME, "--out", str(out), "--tracking-uri", swept["url"]])
    assert result.exit_code == 0, result.output
    assert result.output == f"Wrote {out}: 2 panel(s), 2 line(s), sweep {swept['http']} of {NAME}\n"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    listed = rest(swept["url"], f"artifacts/list?run_id={swept['http']}")["files"]
    assert {item["path"] for item in listed} == {"experiment.toml", *summary.SUMMARY_FILES}


def test_the_servers_store_reads_the_same_without_the_server(swept):
    """`make server` and the default embedded store share mlruns/: a sweep logged through the server (its
    artifacts under mlflow-artifacts:/) compares the same when read from the SQLite file directly."""
    store = resolve_tracking_uri(str(swept["server_folder"] / "mlruns" / "mlflow.db"))
    direct = invoke(["compare", "--experiment", NAME, "--format", "csv", "--tracking-uri", store])
    over_http = invoke(["compare", "--experiment", NAME, "--format", "csv", "--tracking-uri", swept["url"]])
    assert direct.exit_code == 0, direct.output
    assert direct.output == over_http.output
    # without --experiment: the store's latest sweep, by plain SQL on the file and by MLflow's search over http
    latest = invoke(["compare", "--format", "csv", "--tracking-uri", store])
    assert latest.output == invoke(["compare", "--format", "csv", "--tracking-uri", swept["url"]]).output
    assert latest.exit_code == 0 and latest.output.startswith(f"# {NAME}: sweep ")


def test_tinytrain_ui_starts_answers_and_stops_cleanly(swept, tmp_path):
    port = free_port()
    tinytrain = str(Path(sys.executable).with_name("tinytrain"))
    log = tmp_path / "ui.log"
    command = [tinytrain, "ui", "--port", str(port), "--tracking-uri", swept["sqlite_uri"]]
    process = start_in_own_group(command, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, log)
        with urllib.request.urlopen(f"{url}/", timeout=30) as response:
            assert response.status == 200
            assert b"<html" in response.read().lower()
        runs = search(url, "")
        assert len(runs) == 8 + 1 + 4  # the cells, the sweep's parent run and its 4 cell summaries
        banner = log.read_text().splitlines()[0]  # what `tinytrain ui` prints before it becomes the server
        assert banner.startswith(f"MLflow UI on {swept['sqlite_uri']}") and f"http://127.0.0.1:{port}" in banner
    finally:
        stop_group(process)
    assert process.returncode is not None
    assert not group_alive(process.pid)  # no worker left behind


def test_the_rest_reader_of_finished_cells_equals_mlflows_own_search(swept):
    """--dry-run over HTTP reads finished cells through the REST API; it must agree with MLflow's search."""
    from tinytrain.tracking import Store, finished_keys_readonly

    with Store(swept["url"]) as store:
        by_mlflow = {key: run.info.run_id for key, run in store.finished_runs_by_key(store.experiment_id(NAME)).items()}
    assert by_mlflow and finished_keys_readonly(swept["url"], NAME) == by_mlflow


def test_a_run_writer_killed_over_http_loses_nothing_and_doubles_nothing(
    server, experiment_file, process_groups, cli_runner
):
    """Two writers into the server (the sweep's writer and a run writer, each a client of it): the run writer,
    killed while it writes, stops the sweep; the rerun trains each missing cell once, through the server."""
    from tests.system.test_trust import SHORT_RUNS, kill_a_busy_run_writer

    kill_a_busy_run_writer(server["url"], experiment_file(SHORT_RUNS), process_groups, cli_runner)


def test_record_weights_over_http_makes_each_cells_model_through_the_server(swept, http_tracking, tmp_path):
    """The weights files go up through the server, and the writer makes each cell's model at close from what it
    reads back (a download, not a local file); MLflow's loader and reproduce find them over HTTP."""
    import mlflow.pytorch

    from tinytrain.model import LeNet

    grid = tmp_path / "grid.toml"
    grid.write_text(GRID.replace(f'name = "{NAME}"', 'name = "server-records"\nrecord = "weights"'))
    sweep_into(swept["url"], grid)
    found = rest(swept["url"], "experiments/get-by-name?experiment_name=server-records")
    body = {"experiment_ids": [found["experiment"]["experiment_id"]], "max_results": 100}
    models = rest(swept["url"], "logged-models/search", body).get("models", [])
    assert len(models) == 2  # sgd and adam at lr 0.01; at 1000 every seed diverges
    for model in models:
        net = mlflow.pytorch.load_model(f"models:/{model['info']['model_id']}")
        assert isinstance(net, LeNet)
        result = invoke(["reproduce", model["info"]["source_run_id"], "--tracking-uri", swept["url"]])
        assert result.exit_code == 0, result.output
        assert "2 other metric value(s), 1 weights file(s) and 1 LoggedModel(s) (20 tensors) bit for bit" in (
            result.output
        )
