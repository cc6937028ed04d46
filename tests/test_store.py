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
        schema = sorted((kind, name, normalized(sql))
                        for kind, name, sql in connection.execute("SELECT type, name, sql FROM sqlite_master"))
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
    Store(copied).client.search_experiments()  # MLflow opens the copy and adds its Default experiment
    monkeypatch.setenv("TINYTRAIN_SQLITE_DEFAULTS", "1")  # MLflow's own creation, migrations and all
    Store(own).client.search_experiments()

    copied_schema, copied_rows = contents(tmp_path / "copied" / "mlflow.db")
    own_schema, own_rows = contents(tmp_path / "own" / "mlflow.db")
    assert copied_schema == own_schema
    assert copied_rows == own_rows
    assert copied_rows["experiments"] and copied_rows["alembic_version"]  # the comparison compared something


def test_the_template_never_overwrites_an_existing_store(tmp_path, cache):
    uri = resolve_tracking_uri(str(tmp_path / "store" / "mlflow.db"))
    store = Store(uri)
    experiment_id = store.experiment_id("mine")
    before = (tmp_path / "store" / "mlflow.db").read_bytes()
    assert not create_store_from_template(uri)
    assert (tmp_path / "store" / "mlflow.db").read_bytes() == before
    assert Store(uri).experiment_id("mine", create=False) == experiment_id


def test_without_a_usable_cache_mlflow_makes_the_store(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the cache folder cannot be made
    uri = resolve_tracking_uri(str(tmp_path / "store" / "mlflow.db"))
    assert not create_store_from_template(uri)
    assert Store(uri).experiment_id("works")  # MLflow migrated the new store itself
    assert not list(tmp_path.glob("store/.*.new"))


def test_a_damaged_template_is_made_again(tmp_path, cache):
    assert create_store_from_template(resolve_tracking_uri(str(tmp_path / "first" / "mlflow.db")))
    (template,) = cache.glob("mlflow-*-empty.db")
    template.write_bytes(template.read_bytes()[:4096] + b"\0" * 8192)  # a header, then nothing of the tables
    uri = resolve_tracking_uri(str(tmp_path / "store" / "mlflow.db"))
    assert create_store_from_template(uri)
    assert Store(uri).experiment_id("works")
    assert [path.name for path in cache.glob("mlflow-*-empty.db")] == [template.name]
    assert template.stat().st_size > 12288  # the whole template again
