"""The SQLite side of a store, beside MLflow: connection tuning, new stores from a template, the WAL
checkpoint at a sweep's end, and plain read-only queries: for `--dry-run`, compare and plot, which never
import MLflow on a SQLite store, and for a sweep's summary, which reads all its runs in a few queries.

Only reads go around MLflow here; every write to MLflow's tables goes through its client (store.py).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tinytrain.tracking.contract import TrackingError
from tinytrain.tracking.location import is_http, sqlite_path
from tinytrain.tracking.mlflow_private import create_migrated_database

# A switch for tests and benchmarks: leave every SQLite setting and the store's creation to MLflow.
SQLITE_DEFAULTS_ENV = "TINYTRAIN_SQLITE_DEFAULTS"


def sqlite_defaults_only() -> bool:
    return os.environ.get(SQLITE_DEFAULTS_ENV) == "1"


class TunedConnections:
    """WAL journal and synchronous=NORMAL on the connections this process opens to one SQLite store.

    MLflow commits about 25 transactions per run; in SQLite's default rollback-journal mode each one
    creates, fsyncs and deletes a journal file (much of the writer's time). In WAL mode
    with synchronous=NORMAL a commit is an append: a killed process loses nothing it committed, and
    the database stays consistent; only an OS crash or power cut may roll back the last commits.

    MLflow builds its SQLAlchemy engine itself, so this listens to every engine's new connections, but
    tunes only those to this store's file, and only from install() until remove(): nothing else this
    process opens (another store, a test's database) is touched.
    """

    def __init__(self, uri: str):
        self.path = os.path.realpath(sqlite_path(uri))
        self._listener = self._tune  # one bound method, so that remove() finds what install() added

    def install(self) -> TunedConnections:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        if not event.contains(Engine, "connect", self._listener):
            event.listen(Engine, "connect", self._listener)
        return self

    def remove(self) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        if event.contains(Engine, "connect", self._listener):
            event.remove(Engine, "connect", self._listener)

    def _tune(self, dbapi_connection, _record) -> None:
        import sqlite3

        if not isinstance(dbapi_connection, sqlite3.Connection):
            return
        cursor = dbapi_connection.cursor()
        try:
            main = next((row[2] for row in cursor.execute("PRAGMA database_list") if row[1] == "main"), "")
            if main and os.path.realpath(main) == self.path:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()


def template_cache() -> Path:
    """Where the empty, migrated store of each MLflow version is kept ($XDG_CACHE_HOME/tinytrain)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tinytrain"


def create_store_from_template(uri: str) -> bool:
    """Make a new SQLite store as a copy of an empty store that MLflow migrated once; False if not done.

    MLflow builds a new database by running every Alembic migration since its first schema: a large part
    of what a fresh sweep's writer spends before its first run. The result depends only on the MLflow
    version, so it is made once per version (in the user's cache) and copied. The template has no Default
    experiment: MLflow creates it when it opens the copy, with this store's own artifact location, so
    the copy is what MLflow would have made here (a test compares the two). The template is keyed by the
    MLflow version and its migration files, and checked by SQLite before every copy. Any failure leaves
    the job to MLflow; an existing store is never touched (the copy is linked into place only if none
    exists).
    """
    if is_http(uri) or sqlite_defaults_only():
        return False
    target = sqlite_path(uri)
    if target.exists():
        return False
    try:
        template = _store_template()
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".{target.name}.{os.getpid()}.new")
        try:
            import shutil

            shutil.copyfile(template, staged)
            os.link(staged, target)  # fails if the store appeared meanwhile: then that one is used
        finally:
            staged.unlink(missing_ok=True)
    except Exception:  # noqa: BLE001 - no template (no cache folder, a failed migration): MLflow makes the store
        return False
    return True


def _quick_check(database: Path) -> bool:
    """SQLite's own check of a database file's structure (a few ms for the template)."""
    try:
        return query_sqlite(f"sqlite:///{database}", "PRAGMA quick_check") == [("ok",)]
    except TrackingError:
        return False


def _store_template() -> Path:
    """The cached empty store of the installed MLflow and its migrations, made (and checked) on first use."""
    import hashlib
    import sqlite3

    import mlflow

    migrations = Path(mlflow.__file__).parent / "store" / "db_migrations" / "versions"
    schema = hashlib.sha256(" ".join(sorted(path.name for path in migrations.glob("*.py"))).encode()).hexdigest()
    template = template_cache() / f"mlflow-{mlflow.__version__}-{schema[:12]}-empty.db"
    if template.exists():
        if _quick_check(template):
            return template
        template.unlink()  # damaged since it was made: make it again
    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=template.parent) as folder:
        staged = Path(folder) / "store.db"
        create_migrated_database(f"sqlite:///{staged}", Path(folder, "artifacts").as_uri())
        connection = sqlite3.connect(staged)
        try:
            with connection:
                connection.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
                deleted = connection.execute("DELETE FROM experiments WHERE experiment_id = 0").rowcount
            journal = connection.execute("PRAGMA journal_mode=DELETE").fetchone()[0]  # one file, no -wal
            connection.execute("VACUUM")
        finally:
            connection.close()
        if deleted != 1 or journal != "delete" or not _quick_check(staged):
            raise TrackingError(
                f"the new template is not as expected ({deleted} Default experiment, journal {journal})"
            )
        os.replace(staged, template)
    return template


def checkpoint_sqlite(uri: str) -> None:
    """Fold a SQLite store's write-ahead log into the database file and sync it.

    With synchronous=NORMAL (TunedConnections) a commit is in the WAL file but not yet synced: a
    killed process loses nothing, an OS crash or power cut may. At the end of a sweep this makes what it
    wrote durable and leaves one self-contained file (the writer process ends without closing its
    connections, which is when SQLite would do it). Best effort: a busy reader only makes it partial.
    """
    if not is_http(uri):
        with contextlib.suppress(TrackingError):  # a reader in the way for 2 s only makes it partial
            query_sqlite(uri, "PRAGMA wal_checkpoint(TRUNCATE)", timeout=2)


def experiments_readonly(uri: str) -> list[tuple[str, str]]:
    """(experiment id, name) of the active experiments of a SQLite store that hold runs, without MLflow."""
    query = """SELECT experiments.experiment_id, experiments.name FROM experiments
               WHERE experiments.lifecycle_stage = 'active'
                 AND EXISTS (SELECT 1 FROM runs WHERE runs.experiment_id = experiments.experiment_id)
               ORDER BY experiments.experiment_id"""
    return [(str(experiment_id), name) for experiment_id, name in query_sqlite(uri, query, ())]


def store_is_new(uri: str) -> bool:
    """No store yet at a SQLite URI: no file, or an empty one (as `touch` leaves it), which MLflow initialises."""
    path = sqlite_path(uri)
    return not path.exists() or path.stat().st_size == 0


_SHARED: dict[tuple[int, Path], Any] = {}  # (thread, database) -> the connection of a one_connection block


@contextlib.contextmanager
def one_connection(uri: str) -> Iterator[None]:
    """The plain reads of this thread inside the block share one connection to the store, rather than each
    opening (and parsing MLflow's schema) anew: for a read of many queries, such as a whole sweep."""
    import sqlite3
    import threading

    key = (threading.get_ident(), sqlite_path(uri))
    if is_http(uri) or key in _SHARED or store_is_new(uri):
        yield
        return
    connection = sqlite3.connect(key[1], timeout=20)  # not mode=ro: it cannot always read a WAL database
    _SHARED[key] = connection
    try:
        yield
    finally:
        del _SHARED[key]
        connection.close()


def query_sqlite(uri: str, query: str, parameters: tuple | dict = (), timeout: float = 20) -> list[tuple]:
    """A SELECT (or PRAGMA) on a SQLite store, outside MLflow; nothing if the store does not exist yet."""
    import sqlite3
    import threading

    path = sqlite_path(uri)
    if store_is_new(uri):
        return []
    shared = _SHARED.get((threading.get_ident(), path))
    connection = shared or sqlite3.connect(path, timeout=timeout)  # not mode=ro: it cannot always read a WAL db
    try:
        return connection.execute(query, parameters).fetchall()
    except sqlite3.Error as error:
        raise TrackingError(f"cannot read the store {path}: {error}") from None
    finally:
        if shared is None:
            connection.close()


# ---------------------------------------------------------------------------------------------------------
# A sweep read in bulk: a few queries for all its runs, where MLflow's client would make one per run.
# MLflow's schema, read only: runs, tags, latest_metrics, metrics (a NaN metric is stored as 0 with is_nan).
# tests/test_read.py holds every reader here equal to what MLflow's own search and get_metric_history give.

_FINISHED_RUNS = """
    FROM runs
    JOIN tags AS key_tag ON key_tag.run_uuid = runs.run_uuid AND key_tag.key = :key_tag
    JOIN tags AS outcome_tag ON outcome_tag.run_uuid = runs.run_uuid AND outcome_tag.key = :outcome_tag
    WHERE runs.experiment_id = :experiment_id AND runs.status = 'FINISHED' AND runs.lifecycle_stage = 'active'
      AND outcome_tag.value IN (:finished, :diverged, :converged, :stopped)"""


def run_readonly(uri: str, run_id: str) -> tuple[str, str, dict[str, str]] | None:
    """(experiment id, artifact URI, tags) of an active run, or None."""
    rows = query_sqlite(
        uri, "SELECT experiment_id, artifact_uri FROM runs WHERE run_uuid = ? AND lifecycle_stage = 'active'", (run_id,)
    )
    if not rows:
        return None
    tags = dict(query_sqlite(uri, "SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)))
    return str(rows[0][0]), rows[0][1], tags


def experiment_id_readonly(uri: str, name: str) -> str | None:
    rows = query_sqlite(
        uri, "SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'", (name,)
    )
    return str(rows[0][0]) if rows else None


def latest_run_with_tag_readonly(uri: str, experiment_id: str, tag: str, value: str) -> str | None:
    """The active run of the experiment with this tag value that started last (as search_runs orders)."""
    rows = query_sqlite(
        uri,
        """SELECT runs.run_uuid FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid
                                WHERE runs.experiment_id = ? AND runs.lifecycle_stage = 'active'
                                  AND tags.key = ? AND tags.value = ?
                                ORDER BY runs.start_time DESC, runs.run_uuid ASC LIMIT 1""",
        (experiment_id, tag, value),
    )
    return rows[0][0] if rows else None


def latest_sweep_readonly(uri: str, tag: str) -> str | None:
    """The active run of any active experiment with tag = "sweep" that started last: the store's latest sweep."""
    rows = query_sqlite(
        uri,
        """SELECT runs.run_uuid FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid
                                JOIN experiments ON experiments.experiment_id = runs.experiment_id
                                WHERE runs.lifecycle_stage = 'active' AND experiments.lifecycle_stage = 'active'
                                  AND tags.key = ? AND tags.value = 'sweep'
                                ORDER BY runs.start_time DESC, runs.run_uuid ASC LIMIT 1""",
        (tag,),
    )
    return rows[0][0] if rows else None


def finished_runs_readonly(
    uri: str, experiment_id: str, names: dict[str, str]
) -> dict[str, tuple[str, str, dict[str, float]]]:
    """run key -> (run id, outcome, latest value of every metric) of the latest finished run of each cell.

    names: the tag names (key_tag, outcome_tag) and the finished outcomes (finished, diverged, and converged
    of runs recorded before finished existed).
    """
    parameters = {"experiment_id": experiment_id, **names}
    runs = query_sqlite(
        uri,
        f"SELECT runs.run_uuid, key_tag.value, outcome_tag.value {_FINISHED_RUNS} ORDER BY runs.start_time",
        parameters,
    )
    metrics: dict[str, dict[str, float]] = {}
    rows = query_sqlite(
        uri,
        f"""SELECT latest_metrics.run_uuid, latest_metrics.key, latest_metrics.value,
                                        latest_metrics.is_nan
                                 FROM latest_metrics
                                 WHERE latest_metrics.run_uuid IN (SELECT runs.run_uuid {_FINISHED_RUNS})""",
        parameters,
    )
    for run_id, key, value, is_nan in rows:
        metrics.setdefault(run_id, {})[key] = math.nan if is_nan else value
    return {key: (run_id, outcome, metrics.get(run_id, {})) for run_id, key, outcome in runs}


def params_of_runs_readonly(uri: str, run_ids: list[str]) -> dict[str, dict[str, str]]:
    """run id -> {param: value}, in name order, of the given runs (one query, a JSON object a run: a row a run
    rather than a row a param)."""
    import json

    rows = query_sqlite(
        uri,
        """SELECT wanted.value, (SELECT json_group_object(params.key, params.value) FROM params
                                 WHERE params.run_uuid = wanted.value)
           FROM json_each(?) AS wanted""",
        (json.dumps(run_ids),),
    )
    loads = json.loads
    return {run_id: dict(sorted(loads(values).items())) for run_id, values in rows if values != "{}"}


def curves_of_runs_readonly(uri: str, run_ids: list[str], metrics: list[str]) -> list[tuple[str, int, str, float]]:
    """(run id, step, metric, value) of the given runs' metrics: runs in the order given, then metrics in the
    order given, then step (one query)."""
    import json

    rows = query_sqlite(
        uri,
        """SELECT metrics.run_uuid, metrics.step, metrics.key, metrics.value, metrics.is_nan
           FROM json_each(:runs) AS wanted CROSS JOIN metrics ON metrics.run_uuid = wanted.value
           JOIN json_each(:metrics) AS wanted_metric ON +metrics.key = wanted_metric.value
           ORDER BY wanted.key, wanted_metric.key, metrics.step, metrics.timestamp""",
        {"runs": json.dumps(run_ids), "metrics": json.dumps(metrics)},
    )
    nan = math.nan
    return [(run_id, step, key, nan if is_nan else value) for run_id, step, key, value, is_nan in rows]


def histories_of_runs_readonly(uri: str, run_ids: list[str], metric: str) -> dict[str, list[tuple[int, float]]]:
    """run id -> (step, value) of the metric in step order, of the given runs (one query)."""
    import json

    # CROSS JOIN and +key: look each run up by its run_uuid index, not by scanning every run's metric rows
    rows = query_sqlite(
        uri,
        """SELECT metrics.run_uuid, metrics.step, metrics.value, metrics.is_nan
           FROM json_each(?) AS wanted CROSS JOIN metrics ON metrics.run_uuid = wanted.value AND +metrics.key = ?
           ORDER BY wanted.key, metrics.step, metrics.timestamp""",
        (json.dumps(run_ids), metric),
    )
    histories: dict[str, list[tuple[int, float]]] = {}
    for run_id, step, value, is_nan in rows:
        histories.setdefault(run_id, []).append((step, math.nan if is_nan else value))
    return histories


def runs_with_tag_readonly(
    uri: str, tag: str, value: str, experiment_name: str | None = None
) -> list[tuple[str, str, str, str, str, int, int | None]]:
    """(run id, run name, experiment id, experiment name, status, start ms, end ms) of the active runs of active
    experiments with this tag value, the latest started first (as search_runs orders by start_time DESC)."""
    rows = query_sqlite(
        uri,
        """SELECT runs.run_uuid, runs.name, runs.experiment_id, experiments.name, runs.status, runs.start_time,
                  runs.end_time
           FROM runs
           JOIN experiments ON experiments.experiment_id = runs.experiment_id
           JOIN tags ON tags.run_uuid = runs.run_uuid AND tags.key = :tag AND tags.value = :value
           WHERE runs.lifecycle_stage = 'active' AND experiments.lifecycle_stage = 'active'
             AND (:name IS NULL OR experiments.name = :name)
           ORDER BY runs.start_time DESC, runs.run_uuid ASC""",
        {"tag": tag, "value": value, "name": experiment_name},
    )
    return [(run_id, name, str(experiment_id), *rest) for run_id, name, experiment_id, *rest in rows]


def cell_states_readonly(
    uri: str, experiment_id: str, keys: list[str], me: str
) -> list[tuple[str, str, str, int, str | None, str | None, str | None]]:
    """(run id, run key, status, start time, outcome, lease, owner) of the active cell runs (KIND = run) of the
    given run keys that are RUNNING, or FINISHED and written by another owner than `me`: what claiming
    decides on (store.Store.cell_states, held equal to its MLflow search by tests/cli/test_claims_store.py),
    in one query. The wanted keys are a set each run key is looked up in (IN a subquery), not a table joined
    to the run keys: a join compared every run key of the store with every wanted key, at every claim."""
    import json

    from tinytrain.tracking.contract import KIND, LEASE, OUTCOME, OWNER, RUN_KEY

    def tag(name: str) -> str:
        return f"(SELECT value FROM tags WHERE tags.run_uuid = runs.run_uuid AND tags.key = '{name}')"

    rows = query_sqlite(
        uri,
        f"""SELECT runs.run_uuid, key_tag.value, runs.status, runs.start_time, {tag(OUTCOME)}, {tag(LEASE)},
                   {tag(OWNER)} AS owner
            FROM tags AS key_tag
            JOIN runs ON runs.run_uuid = key_tag.run_uuid
            JOIN tags AS kind_tag ON kind_tag.run_uuid = runs.run_uuid AND kind_tag.key = :kind_tag
                                  AND kind_tag.value = 'run'
            WHERE key_tag.key = :key_tag AND key_tag.value IN (SELECT value FROM json_each(:keys))
              AND runs.experiment_id = :experiment_id AND runs.lifecycle_stage = 'active'
              AND (runs.status = 'RUNNING' OR (runs.status = 'FINISHED' AND owner IS NOT NULL AND owner != :me))""",
        {"keys": json.dumps(keys), "key_tag": RUN_KEY, "kind_tag": KIND, "experiment_id": experiment_id, "me": me},
    )
    return [tuple(row) for row in rows]
