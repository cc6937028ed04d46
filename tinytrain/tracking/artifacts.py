"""Where a run's artifacts are written: in place on a local store, through the client anywhere else; and
the artifacts of experiments that `make server` created, read and written on the same SQLite store.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from tinytrain.tracking.location import sqlite_path
from tinytrain.tracking.mlflow_private import register_artifact_repository, restore_artifact_repository

SERVER_ARTIFACTS_SCHEME = "mlflow-artifacts"


def staging_folder() -> str | None:
    """Where files bound for a server are staged: tmpfs where there is one (no disk metadata writes)."""
    import os

    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class ServerArtifactsOnSqlite:
    """Let a SQLite store read and write the artifacts of the experiments that `make server` created.

    Through `mlflow server --serve-artifacts` an experiment gets `mlflow-artifacts:/<id>` as its artifact
    root, which MLflow resolves only through a server: on the same mlruns/ without the server (tinytrain's
    default), compare and plot could not read a sweep's experiment file, nor a sweep add runs to it. The
    server of server_command serves the artifacts/ folder beside its database, so where the tracking URI is
    a SQLite store such a URI names artifacts/<path>; over HTTP, MLflow's own repository answers as before.

    MLflow has no public way to add a repository for one client, so this replaces the scheme's entry in
    MLflow's registry of this process (mlflow_private.py) while any store is open: the first install() puts
    it in, the last remove() puts MLflow's entry back, in whatever order the stores close. The repository
    follows the tracking URI MLflow resolves for each request (the client's, else the process's default, as
    MLflow's own repository does), never the URI of the store that installed it: a store left open, or
    closed out of order, cannot send a later client's requests to another store's folder.
    """

    _lock = threading.Lock()
    _open = 0  # installs not yet removed, in this process
    _previous: Any = None  # MLflow's entry, put back by the last remove()

    def __init__(self, store_uri: str | None = None):
        self.store_uri = store_uri  # the store that opened it (for messages); requests resolve their own
        self._installed = False

    def install(self) -> ServerArtifactsOnSqlite:
        cls = type(self)
        with cls._lock:
            if cls._open == 0:
                cls._previous = register_artifact_repository(SERVER_ARTIFACTS_SCHEME, _server_artifacts_repository)
            cls._open += 1
        self._installed = True
        return self

    def remove(self) -> None:
        if not self._installed:
            return
        cls = type(self)
        with cls._lock:
            cls._open -= 1
            if cls._open == 0:
                restore_artifact_repository(SERVER_ARTIFACTS_SCHEME, cls._previous)
                cls._previous = None
        self._installed = False


def _server_artifacts_repository(
    artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None
) -> Any:
    """The repository of an `mlflow-artifacts:` URI: artifacts/<path> beside the database where the tracking URI
    (the client's, else the process's default, as MLflow resolves it) is a SQLite store; else MLflow's own."""
    import mlflow
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    store = tracking_uri or mlflow.get_tracking_uri()
    parsed = urlparse(artifact_uri)
    if store.startswith("sqlite:///") and not parsed.netloc:  # mlflow-artifacts://host/... names a server
        local = sqlite_path(store).absolute().parent / "artifacts" / parsed.path.lstrip("/")
        return LocalArtifactRepository(local.as_uri(), tracking_uri=tracking_uri, registry_uri=registry_uri)
    return MlflowArtifactsRepository(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)


def local_artifact_path(artifact_uri: str) -> Path | None:
    """The folder of a local artifact location (file:// URI or absolute path); None for any other."""
    if artifact_uri.startswith("file://"):
        return Path(unquote(urlparse(artifact_uri).path))
    if Path(artifact_uri).is_absolute():  # "mlflow-artifacts:/...", "s3://..." are not
        return Path(artifact_uri)
    return None


def local_artifact_file(store_uri: str, artifact_uri: str, path: str) -> Path | None:
    """The local file of an artifact, where its location is a folder of this machine; None elsewhere.

    On a SQLite store that also holds the experiments of `make server`, mlflow-artifacts:/<path> names
    artifacts/<path> beside the database (see ServerArtifactsOnSqlite).
    """
    folder = local_artifact_path(artifact_uri)
    if folder is None and artifact_uri.startswith(f"{SERVER_ARTIFACTS_SCHEME}:") and store_uri.startswith("sqlite:///"):
        parsed = urlparse(artifact_uri)
        if not parsed.netloc:
            folder = sqlite_path(store_uri).parent / "artifacts" / unquote(parsed.path).lstrip("/")
    return None if folder is None else folder / path


class ArtifactFolder:
    """A folder whose files are the artifacts of a run (or of a LoggedModel, with of_model) once the block ends.

    Where the artifacts are local files (a SQLite store's artifacts/ folder) it is their folder itself:
    files are written where they stay, without the staging copy and the artifact repository that MLflow's
    log_artifacts builds on every call (a good part of the writer's time a run). Files written in place are
    not all-or-nothing: a run that fails midway can leave partial files in its own folder, under its
    FAILED run (as a log_artifacts cut short would). Anywhere else (a server) it is a temporary folder,
    uploaded through the client at the end of the block.
    """

    def __init__(self, client: Any, owner_id: str, artifact_uri: str, of_model: bool = False):
        self.client, self.owner_id, self.of_model = client, owner_id, of_model
        self.local = local_artifact_path(artifact_uri)
        self.staging: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> Path:
        if self.local is not None:
            self.local.mkdir(parents=True, exist_ok=True)
            return self.local
        self.staging = tempfile.TemporaryDirectory(dir=staging_folder())
        return Path(self.staging.name)

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self.staging is None:
            return
        try:
            if exc_type is None:
                upload = self.client.log_model_artifacts if self.of_model else self.client.log_artifacts
                upload(self.owner_id, self.staging.name)
        finally:
            self.staging.cleanup()
