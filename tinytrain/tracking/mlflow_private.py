"""The only place tinytrain uses MLflow's private or internal APIs; each for a reason no public API serves.

- The artifact repository registry (`_artifact_repository_registry`, its `_registry` dict): MLflow has no
  public way to add a repository for one client, and a SQLite store must read and write the artifacts of
  experiments that `mlflow server --serve-artifacts` created (`mlflow-artifacts:/` URIs, which MLflow resolves
  only through a server). Used by artifacts.ServerArtifactsOnSqlite, which puts the previous entry back.
- `SqlAlchemyStore`, constructed directly: it builds and migrates an empty database once per MLflow version,
  the template that sqlite.create_store_from_template copies for every new store, where MLflow would run every
  Alembic migration again for each one (most of a new sweep's start-up).

Anything that changes in MLflow's internals fails here first; both callers fall back to MLflow's own behaviour
(no template: MLflow creates the store; no registry: server artifacts read only through a server).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def register_artifact_repository(scheme: str, factory: Callable[..., Any]) -> Any:
    """Make `factory` the artifact repository of `scheme` in this process; the previous entry (None if none)."""
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry as registry

    previous = registry._registry.get(scheme)
    registry.register(scheme, factory)
    return previous


def restore_artifact_repository(scheme: str, previous: Any) -> None:
    """Put back what register_artifact_repository replaced."""
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry as registry

    if previous is None:
        registry._registry.pop(scheme, None)
    else:
        registry.register(scheme, previous)


def create_migrated_database(database_uri: str, artifact_root: str) -> None:
    """An MLflow database at database_uri with every migration applied (and its Default experiment)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(database_uri, artifact_root)
    store.engine.dispose()
