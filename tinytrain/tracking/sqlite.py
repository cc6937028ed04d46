"""The SQLite side of a store, beside MLflow: connection tuning, new stores from a template, the WAL
checkpoint at a sweep's end, and plain read-only queries (for `--dry-run`, which never imports MLflow).

Only reads go around MLflow here; every write to MLflow's tables goes through its client (store.py).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from tinytrain.tracking.contract import TrackingError
from tinytrain.tracking.location import is_http, sqlite_path

# A switch for tests and benchmarks: leave every SQLite setting and the store's creation to MLflow.
SQLITE_DEFAULTS_ENV = "TINYTRAIN_SQLITE_DEFAULTS"


def sqlite_defaults_only() -> bool:
    return os.environ.get(SQLITE_DEFAULTS_ENV) == "1"


class TunedConnections:
    """WAL journal and synchronous=NORMAL on the connections this process opens to one SQLite store.

    MLflow commits about 25 transactions per run; in SQLite's default rollback-journal mode each one
    creates, fsyncs and deletes a journal file (4 ms here: a third of the writer's time). In WAL mode
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

    MLflow builds a new database by running every Alembic migration since its first schema: 1.1 s of the
    2.9 s a fresh sweep's writer spent before its first run. The result depends only on the MLflow
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
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = SqlAlchemyStore(f"sqlite:///{staged}", Path(folder, "artifacts").as_uri())
        store.engine.dispose()
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
            raise TrackingError(f"the new template is not as expected ({deleted} Default experiment, "
                                f"journal {journal})")
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


def query_sqlite(uri: str, query: str, parameters: tuple = (), timeout: float = 20) -> list[tuple]:
    """A SELECT (or PRAGMA) on a SQLite store, outside MLflow; nothing if the store does not exist yet."""
    import sqlite3

    path = sqlite_path(uri)
    if not path.exists():
        return []
    connection = sqlite3.connect(path, timeout=timeout)  # not mode=ro: it cannot always read a WAL database
    try:
        return connection.execute(query, parameters).fetchall()
    except sqlite3.Error as error:
        raise TrackingError(f"cannot read the store {path}: {error}") from None
    finally:
        connection.close()
