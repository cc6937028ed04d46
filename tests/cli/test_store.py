"""A new SQLite store is a copy of an empty store MLflow migrated once: it must be what MLflow would make."""

from __future__ import annotations

import sqlite3

import pytest

from tinytrain.tracking import Store, create_store_from_template, resolve_tracking_uri, template_cache

CREATION_TIMES = {"creation_time", "last_update_time"}


def normalized(sql: str | None) -> tuple[str, ...]:
    """A CREATE statement as its sorted clauses: MLflow's own migrations write the CHECK constraints of a
    table in an order that changes from one run to the next (a set's order in Alembic's batch mode)."""
    return tuple(sorted(line.strip().rstrip(",").strip() for line in (sql or "").splitlines()))


def contents(path) -> tuple[list, dict]:
    """The schema and every row of every table, with creation times left out."""
    connection = sqlite3.connect(path)
    try:
        schema = sorted(
            (kind, name, normalized(sql))
            for kind, name, sql in connection.execute("SELECT type, name, sql FROM sqlite_master")
        )
        tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = {}
        for table in tables:
            cursor = connection.execute(f"SELECT * FROM {table}")
            keep = [i for i, column in enumerate(cursor.description) if column[0] not in CREATION_TIMES]
            rows[table] = sorted(tuple(row[i] for i in keep) for row in cursor)
        return schema, rows
    finally:
        connection.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tinytrain"


def test_a_store_from_the_template_equals_the_store_mlflow_makes(tmp_path, cache, monkeypatch):
    copied = resolve_tracking_uri(str(tmp_path / "copied" / "mlflow.db"))
    own = resolve_tracking_uri(str(tmp_path / "own" / "mlflow.db"))
    assert create_store_from_template(copied)
    assert template_cache() == cache and len(list(cache.glob("mlflow-*-empty.db"))) == 1
    with Store(copied) as store:
        store.client.search_experiments()  # MLflow opens the copy and adds its Default experiment
    monkeypatch.setenv("TINYTRAIN_SQLITE_DEFAULTS", "1")  # MLflow's own creation, migrations and all
    with Store(own) as store:
        store.client.search_experiments()

    copied_schema, copied_rows = contents(tmp_path / "copied" / "mlflow.db")
    own_schema, own_rows = contents(tmp_path / "own" / "mlflow.db")
    assert copied_schema == own_schema
    assert copied_rows == own_rows
    assert copied_rows["experiments"] and copied_rows["alembic_version"]  # the comparison compared something


def test_the_template_never_overwrites_an_existing_store(tmp_path, cache):
    uri = resolve_tracking_uri(str(tmp_path / "store" / "mlflow.db"))
    with Store(uri) as store:
        experiment_id = store.experiment_id("mine")
    before = (tmp_path / "store" / "mlflow.db").read_bytes()
    assert not create_store_from_template(uri)
    assert (tmp_path / "store" / "mlflow.db").read_bytes() == before
    with Store(uri) as store:
        assert store.experiment_id("mine", create=False) == experiment_id


def test_without_a_usable_cache_mlflow_makes_the_store(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the cache folder cannot be made
    uri = resolve_tracking_uri(str(tmp_path / "store" / "mlflow.db"))
    assert not create_store_from_template(uri)
    with Store(uri) as store:
        assert store.experiment_id("works")  # MLflow migrated the new store itself
    assert not list(tmp_path.glob("store/.*.new"))


def test_a_damaged_template_is_made_again(tmp_path, cache):
    assert create_store_from_template(resolve_tracking_uri(str(tmp_path / "first" / "mlflow.db")))
    (template,) = cache.glob("mlflow-*-empty.db")
    template.write_bytes(template.read_bytes()[:4096] + b"\0" * 8192)  # a header, then nothing of the tables
    uri = resolve_tracking_uri(str(tmp_path / "store" / "mlflow.db"))
    assert create_store_from_template(uri)
    with Store(uri) as store:
        assert store.experiment_id("works")
    assert [path.name for path in cache.glob("mlflow-*-empty.db")] == [template.name]
    assert template.stat().st_size > 12288  # the whole template again


# ---------------------------------------------------------------------------------------------------------
# The repository of server artifacts that an open store installs follows the tracking URI of each request


def server_artifacts(tracking_uri: str | None = None):
    """MLflow's repository for an `mlflow-artifacts:` URI, as a client of tracking_uri (None: the process's
    default, as the fluent API's runs:/ and models:/ loads ask for it)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository("mlflow-artifacts:/1/abc/artifacts", tracking_uri=tracking_uri)


def test_a_store_left_open_sends_no_other_clients_server_artifacts_to_its_folder(tmp_path, store_uri):
    """A Store never closed keeps its repository installed: a later client of a server (the process's URI
    set to it) still gets the server's artifacts, and a client of another SQLite store that store's folder."""
    import mlflow
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    left_open = Store(resolve_tracking_uri(str(tmp_path / "left-open" / "mlflow.db")))
    try:
        other = resolve_tracking_uri(str(tmp_path / "other" / "mlflow.db"))
        repository = server_artifacts(other)
        assert isinstance(repository, LocalArtifactRepository)
        assert repository.artifact_dir == str(tmp_path / "other" / "artifacts" / "1" / "abc" / "artifacts")
        default = server_artifacts()  # the process's tracking URI: conftest's MLFLOW_TRACKING_URI
        assert isinstance(default, LocalArtifactRepository)
        assert default.artifact_dir == str(tmp_path / "store" / "artifacts" / "1" / "abc" / "artifacts")
        mlflow.set_tracking_uri("http://127.0.0.1:9")  # nothing is asked of it: the repository is only made
        repository = server_artifacts()
        assert isinstance(repository, MlflowArtifactsRepository)
        assert repository.artifact_uri.startswith("http://127.0.0.1:9/api/2.0/mlflow-artifacts/artifacts/1/abc")
    finally:
        left_open.close()  # (conftest puts the process's tracking URI back)


def test_stores_closed_out_of_order_put_mlflows_own_repository_back(tmp_path):
    """The repository stays while any store is open and goes with the last one, whichever order they close in."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    first = Store(resolve_tracking_uri(str(tmp_path / "first" / "mlflow.db")))
    second = Store(resolve_tracking_uri(str(tmp_path / "second" / "mlflow.db")))
    first.close()
    assert isinstance(server_artifacts(second.uri), LocalArtifactRepository)  # the second store is still open
    second.close()
    with pytest.raises(MlflowException, match="mlflow-artifacts URI was supplied"):  # MLflow's own: a server only
        server_artifacts(second.uri)
    second.close()  # closing twice changes nothing
    with Store(first.uri):
        assert isinstance(server_artifacts(first.uri), LocalArtifactRepository)


# ---------------------------------------------------------------------------------------------------------
# The model template: made once per MLflow, torch and Python, then the writer never imports torch


def model_template_files(folder) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_the_model_template_is_cached_whole_and_gives_the_same_files(cache):
    from tinytrain.tracking.store import ModelFiles

    made = ModelFiles()
    folder = ModelFiles.cached_template_folder()
    assert folder.parent == cache and folder.is_dir()
    on_disk = model_template_files(folder)
    assert "MLmodel" in on_disk and "data/pickle_module_info.txt" in on_disk and "data/model.pth" not in on_disk
    loaded = ModelFiles()  # from the cache this time
    assert loaded.mlmodel == made.mlmodel and loaded.files == made.files
    assert b"tinytrain.tracking.weights_pickle" in on_disk["data/pickle_module_info.txt"]
    assert not [path for path in cache.iterdir() if path.name.startswith(".")]  # nothing left staged


def test_a_damaged_model_template_is_made_again(cache):
    from tinytrain.tracking.store import ModelFiles

    made = ModelFiles()
    folder = ModelFiles.cached_template_folder()
    (folder / "MLmodel").write_text("flavors: {}\n")  # its placeholders gone
    again = ModelFiles()
    assert again.mlmodel == made.mlmodel and again.files == made.files


def test_a_sweeps_writer_never_imports_torch_once_the_model_template_is_cached(tmp_path, cache):
    """Two sweeps into two stores: the first writer makes the template (and imports torch for it), the second
    imports neither torch nor mlflow.pytorch (and no writer matplotlib); the models it wrote load as the LeNet
    with the run's weights, and reproduce checks them bit for bit."""
    import json
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import mlflow

    from tinytrain.engines.sequential import evaluate

    tinytrain = str(Path(sys.executable).parent / "tinytrain")
    grid = ["--set", "steps=3", "--set", "optimizer=adam", "--set", "lr=0.01", "--set", "seed=0,1"]
    imported = []
    for name in ("first", "second"):
        uri = resolve_tracking_uri(str(tmp_path / name / "mlflow.db"))
        usage = tmp_path / f"{name}-usage.jsonl"  # a file each: the writers' lines cannot come in the wrong order
        subprocess.run(
            [tinytrain, "sweep", *grid, "--quiet", "--tracking-uri", uri],
            env={**os.environ, "TINYTRAIN_WRITER_USAGE": str(usage)},
            check=True,
            capture_output=True,
            timeout=300,
        )
        # the sweep does not wait for its writer's exit: the writer appends its line as it exits
        deadline = time.monotonic() + 120
        while not (usage.exists() and usage.read_text().endswith("\n")):
            assert time.monotonic() < deadline, f"the {name} sweep's writer never reported what it imported"
            time.sleep(0.05)
        (line,) = usage.read_text().splitlines()
        imported.append(json.loads(line)["imported"])
    first, second = imported
    assert "torch" in first and "mlflow.pytorch" in first
    assert "torch" not in second and "mlflow.pytorch" not in second
    assert "matplotlib" not in first and "matplotlib" not in second  # the sweep's process draws the summary
    client = mlflow.MlflowClient(uri)
    runs = [
        run
        for run in client.search_runs([client.get_experiment_by_name("optimizer-grid").experiment_id])
        if run.data.tags.get("tinytrain.kind") == "run"
    ]
    assert len(runs) == 2
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)  # models:/ resolves through the fluent API's store
    try:
        nets = [mlflow.pytorch.load_model(f"models:/{run.outputs.model_outputs[0].model_id}") for run in runs]
    finally:
        mlflow.set_tracking_uri(previous)
    for run, net in zip(runs, nets, strict=True):
        assert evaluate(net.state_dict(), 0, 3) == run.data.metrics["final_loss"]  # the default data_seed, target
        checked = subprocess.run(
            [tinytrain, "reproduce", run.info.run_id, "--tracking-uri", uri],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert checked.returncode == 0 and checked.stdout.startswith("identical:"), checked.stdout + checked.stderr
