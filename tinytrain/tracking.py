"""Every MLflow call of tinytrain lives here: where the store is, and how runs are written and read.

The data contract (see the README): one parent run per sweep, one nested child run per grid cell with the
cell's params, its `loss` at every step, `initial_loss`, `final_loss`, tags (run key, outcome, environment)
and its final weights as an MLflow model at the final step. A Recorder is the single writing path of a
sweep: the sweep hands it specs and results, in this process or in a background writer process.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

# MLflow 3 sends usage telemetry from every process that imports it; a research tool should not phone home.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from tinytrain.spec import DEFAULTS, PROJECT_ROOT, Experiment, RunSpec, load_experiment

if TYPE_CHECKING:
    from tinytrain.train import RunResult

DEFAULT_STORE = Path("mlruns") / "mlflow.db"

# Tag names: the contract with everything that reads the store.
RUN_KEY = "tinytrain.run_key"
OUTCOME = "tinytrain.outcome"
KIND = "tinytrain.kind"  # "sweep" on parent runs, "run" on the runs of grid cells
OWNER = "tinytrain.owner"  # host:pid:start of the process that writes the run, to find runs left RUNNING
ERROR = "tinytrain.error"
PARENT = "mlflow.parentRunId"
FINISHED_OUTCOMES = ("converged", "diverged")
EXPERIMENT_FILE = "experiment.toml"
FINAL_CHECKPOINT = "checkpoints/final.pt"
LOSS = "loss"


class TrackingError(RuntimeError):
    """The store cannot be reached or does not hold what was asked for."""


# ---------------------------------------------------------------------------------------------------------
# Where the store is


def resolve_tracking_uri(uri: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the embedded store mlruns/mlflow.db of this folder.

    A plain path is taken as a SQLite file. SQLite URIs are made absolute so that every process that gets
    the URI (workers, the UI) opens the same file whatever its working directory.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or str(DEFAULT_STORE)
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
    elif "://" in uri:
        raise TrackingError(f"tracking URI '{uri}' is not supported: use a SQLite file (sqlite:///path/mlflow.db "
                            "or a path) or an mlflow server (http://127.0.0.1:5000)")
    else:
        path = Path(uri)
    return f"sqlite:///{path.expanduser().resolve()}"


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def sqlite_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///"))


def artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store go to artifacts/ beside the database; a server decides its own."""
    if is_http(uri):
        return None
    return (sqlite_path(uri).parent / "artifacts").as_uri()


def _serve_server_artifacts_locally() -> None:
    """Let a SQLite store read and write the artifacts of the experiments that `make server` created.

    Through `mlflow server --serve-artifacts` an experiment gets `mlflow-artifacts:/<id>` as its artifact
    root, which MLflow resolves only through a server: on the same mlruns/ without the server (tinytrain's
    default), compare and plot could not read a sweep's experiment file, nor a sweep add runs to it. The
    server of server_command serves the artifacts/ folder beside its database, so on a SQLite store such a
    URI names artifacts/<path>; over HTTP, MLflow's own repository answers as before.
    """
    from mlflow.store.artifact import artifact_repository_registry as registry

    registry._artifact_repository_registry.register("mlflow-artifacts", _server_artifacts_repository)


def _server_artifacts_repository(artifact_uri: str, tracking_uri: str | None = None,
                                 registry_uri: str | None = None) -> Any:
    import mlflow
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    store = tracking_uri or mlflow.get_tracking_uri()
    parsed = urlparse(artifact_uri)
    if store.startswith("sqlite:///") and not parsed.netloc:  # mlflow-artifacts://host/... names a server
        local = sqlite_path(store).parent / "artifacts" / parsed.path.lstrip("/")
        return LocalArtifactRepository(local.as_uri(), tracking_uri=tracking_uri, registry_uri=registry_uri)
    return MlflowArtifactsRepository(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)


def check_store(uri: str, timeout: float = 3.0) -> None:
    """Fail fast, with one line, when the store cannot be used; before any run starts."""
    if is_http(uri):
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as response:
                if response.status != 200:
                    raise TrackingError(f"the tracking server at {uri} answered {response.status} on /health")
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise TrackingError(f"cannot reach the tracking server at {uri} ({reason}): start it with "
                                "`make server` or fix --tracking-uri") from None
        return
    folder = sqlite_path(uri).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrackingError(f"cannot create the store folder {folder}: {error.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise TrackingError(f"the store folder {folder} is not writable: fix its permissions or use --tracking-uri")


def runs_page_url(uri: str, experiment_id: str, ui_address: str = "http://127.0.0.1:5000") -> str:
    """The runs table of an experiment (the UI opens experiments on a GenAI page otherwise)."""
    base = uri if is_http(uri) else ui_address
    return f"{base}/#/experiments/{experiment_id}/runs"


# ---------------------------------------------------------------------------------------------------------
# The environment a run was computed in


def git_state(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """The commit of tinytrain's own code and whether its tree had uncommitted changes."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        if done.returncode:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--", "tinytrain", "pyproject.toml"))
    except (OSError, subprocess.SubprocessError):
        return {"tinytrain.git_commit": "unknown", "tinytrain.git_dirty": "unknown"}
    return {"tinytrain.git_commit": commit, "tinytrain.git_dirty": str(dirty), "mlflow.source.git.commit": commit}


def process_owner() -> str:
    """host:pid:start-time of this process: enough to tell later whether it still runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid())}"


def _process_start(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def owner_is_gone(owner: str) -> bool:
    """True when the process that wrote a RUNNING run is known to be dead (on this host)."""
    try:
        host, pid_text, start = owner.split(":")
        pid = int(pid_text)
    except ValueError:
        return True  # not written by tinytrain's owner scheme: nobody can still be writing it
    if host != socket.gethostname():
        return False  # cannot tell for another machine; leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return start != "?" and _process_start(pid) != start  # the pid was reused by another process


def environment() -> dict[str, str]:
    """Where runs are made; torch's version from its metadata (the same string as torch.__version__), so
    that a sweep with nothing to train never imports torch."""
    from importlib.metadata import version

    import mlflow

    return {
        "tinytrain.python": platform.python_version(),
        "tinytrain.torch": version("torch"),
        "tinytrain.mlflow": mlflow.__version__,
        "tinytrain.platform": platform.platform(),
        "tinytrain.host": socket.gethostname(),
        **git_state(),
    }


# ---------------------------------------------------------------------------------------------------------
# Writing


@dataclass
class SweepCounts:
    """What a sweep wrote: where, and how many runs of each outcome."""

    total: int = 0
    skipped: int = 0
    converged: int = 0
    diverged: int = 0
    failed: int = 0
    killed: int = 0
    replaced: int = 0
    recovered: int = 0  # runs left RUNNING by killed processes, marked FAILED when this sweep opened
    experiment_id: str = ""
    parent_run_id: str | None = None
    run_ids: dict[str, str] = field(default_factory=dict)  # key -> run id of every run written


_sqlite_tuned = False


def tune_sqlite_connections() -> None:
    """WAL journal and synchronous=NORMAL on every SQLite connection this process opens.

    MLflow commits about 25 transactions per run; in SQLite's default rollback-journal mode each one
    creates, fsyncs and deletes a journal file (4 ms here: a third of the writer's time). In WAL mode
    with synchronous=NORMAL a commit is an append: a killed process loses nothing it committed, and
    the database stays consistent; only an OS crash or power cut may roll back the last commits.
    """
    global _sqlite_tuned
    if _sqlite_tuned:
        return
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _tune(dbapi_connection, _record) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    _sqlite_tuned = True


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
    if is_http(uri) or os.environ.get("TINYTRAIN_SQLITE_DEFAULTS") == "1":
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
        return _query_sqlite(f"sqlite:///{database}", "PRAGMA quick_check") == [("ok",)]
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


def local_artifact_path(artifact_uri: str) -> Path | None:
    """The folder of a local artifact location (file:// URI or absolute path); None for any other."""
    if artifact_uri.startswith("file://"):
        from urllib.parse import unquote

        return Path(unquote(urlparse(artifact_uri).path))
    if Path(artifact_uri).is_absolute():  # "mlflow-artifacts:/...", "s3://..." are not
        return Path(artifact_uri)
    return None


class ArtifactFolder:
    """A folder whose files are the artifacts of a run (or of a LoggedModel, with of_model) once the block ends.

    Where the artifacts are local files (a SQLite store's artifacts/ folder) it is their folder itself:
    files are written where they stay, without the staging copy and the artifact repository that MLflow's
    log_artifacts builds on every call (about 8 ms of the writer's 40 a run). Files written in place are
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
        self.staging = tempfile.TemporaryDirectory()
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


def checkpoint_sqlite(uri: str) -> None:
    """Fold a SQLite store's write-ahead log into the database file and sync it.

    With synchronous=NORMAL (tune_sqlite_connections) a commit is in the WAL file but not yet synced: a
    killed process loses nothing, an OS crash or power cut may. At the end of a sweep this makes what it
    wrote durable and leaves one self-contained file (the writer process ends without closing its
    connections, which is when SQLite would do it). Best effort: a busy reader only makes it partial.
    """
    if not is_http(uri):
        with contextlib.suppress(TrackingError):  # a reader in the way for 2 s only makes it partial
            _query_sqlite(uri, "PRAGMA wal_checkpoint(TRUNCATE)", timeout=2)


class Store:
    """An MLflow tracking store, through MlflowClient, with tinytrain's data contract."""

    def __init__(self, uri: str):
        import logging

        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no schema-migration chatter on a new store
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # the pickle-format notice, once a model
        # Over HTTP MLflow prints "View run ... at" for each run it ends (and fetches the run to do so).
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        _serve_server_artifacts_locally()
        if not is_http(uri) and os.environ.get("TINYTRAIN_SQLITE_DEFAULTS") != "1":
            tune_sqlite_connections()
        create_store_from_template(uri)  # before MLflow opens it: a new store costs a copy, not migrations
        self.uri = uri
        mlflow.set_tracking_uri(uri)  # mlflow.pytorch.log_model resolves the store globally
        self.client = mlflow.MlflowClient(uri)
        self.artifact_uris: dict[str, str] = {}  # run id -> artifact URI, of the runs started and not finished

    # experiments -------------------------------------------------------------------------------------
    def experiment_id(self, name: str, create: bool = True) -> str | None:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                raise TrackingError(f"experiment '{name}' is deleted in {self.uri}: restore it with "
                                    f"`mlflow experiments restore` or pick another name")
            return experiment.experiment_id
        if not create:
            return None
        root = artifact_root(self.uri)
        location = f"{root}/{name}" if root else None
        try:
            return self.client.create_experiment(
                name, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development"}
            )
        except Exception:  # another process created it first
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    # reading -----------------------------------------------------------------------------------------
    def search(self, experiment_id: str, filter_string: str = "") -> list[Any]:
        """Every active run of the experiment that matches, all pages."""
        runs, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def finished_runs_by_key(self, experiment_id: str) -> dict[str, Any]:
        """run key -> the finished MLflow Run of each cell (the latest, if a cell has several)."""
        runs = self.search(experiment_id, "attributes.status = 'FINISHED'")
        return {
            run.data.tags[RUN_KEY]: run
            for run in sorted(runs, key=lambda run: run.info.start_time)
            if run.data.tags.get(OUTCOME) in FINISHED_OUTCOMES and RUN_KEY in run.data.tags
        }

    def recover_abandoned(self, experiment_id: str) -> int:
        """Mark FAILED the runs left RUNNING by processes that were killed outright."""
        recovered = 0
        for run in self.search(experiment_id, "attributes.status = 'RUNNING'"):
            if owner_is_gone(run.data.tags.get(OWNER, "")):
                self.client.set_tag(run.info.run_id, ERROR, "abandoned: its process ended while it ran")
                self.client.set_terminated(run.info.run_id, "FAILED")
                recovered += 1
        return recovered

    # writing -----------------------------------------------------------------------------------------
    def start_sweep(self, experiment_id: str, experiment: Experiment, cells: int, tags: dict[str, str]) -> str:
        run = self.client.create_run(
            experiment_id,
            run_name=f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={KIND: "sweep", OWNER: process_owner(), "tinytrain.cells": str(cells), **tags},
        )
        run_id = run.info.run_id
        self.client.log_text(run_id, experiment.to_toml(), EXPERIMENT_FILE)
        return run_id

    def start_run(self, experiment_id: str, parent_run_id: str | None, spec: RunSpec, tags: dict[str, str]) -> str:
        from mlflow.entities import Param

        run_tags = {KIND: "run", RUN_KEY: spec.key, OWNER: process_owner(), **tags}
        if parent_run_id:
            run_tags[PARENT] = parent_run_id
        run = self.client.create_run(experiment_id, run_name=spec.run_name, tags=run_tags)
        params = [Param(key, value) for key, value in spec.params().items()]
        self.client.log_batch(run.info.run_id, params=params)
        self.artifact_uris[run.info.run_id] = run.info.artifact_uri
        return run.info.run_id

    def finish_run(self, run_id: str, result: RunResult, experiment_id: str) -> None:
        """Log a run's losses, outcome and checkpoints, then close it (FINISHED, or FAILED if it raised).

        Each checkpoint is an MLflow LoggedModel linked to the run at its step, with the run's metrics at
        that step, as `mlflow.pytorch.log_model(step=...)` makes it; but built from the client calls that
        log_model makes, so that the run's metrics go to the store once, in one batch, instead of being
        read back for every model (see log_checkpoints).
        """
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, RunTag

        models = self.log_checkpoints(run_id, result, experiment_id)
        try:
            now = int(time.time() * 1000)
            metrics = [Metric(LOSS, value, now, step, model_id=models.get(step))
                       for step, value in enumerate(result.losses)]
            if result.losses:
                final_step = len(result.losses) - 1
                metrics.append(Metric("initial_loss", result.initial_loss, now, 0, model_id=models.get(0)))
                metrics.append(Metric("final_loss", result.final_loss, now, final_step,
                                      model_id=models.get(final_step)))
            metrics.append(Metric("train_seconds", result.train_seconds, now, 0, model_id=models.get(0)))
            tags = [RunTag(OUTCOME, result.outcome)]
            tags += [RunTag(f"tinytrain.{key}", value) for key, value in result.runtime.items()]
            if result.error:
                tags.append(RunTag(ERROR, result.error[:5000]))
            self.client.log_batch(run_id, metrics=metrics, tags=tags)
            if models:
                outputs = [LoggedModelOutput(model_id, step) for step, model_id in models.items()]
                self.client.log_outputs(run_id, outputs)
        except BaseException:
            for model_id in models.values():
                self.client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
            raise
        for model_id in models.values():
            self.client.finalize_logged_model(model_id, LoggedModelStatus.READY)
        self.client.set_terminated(run_id, "FAILED" if result.outcome == "failed" else "FINISHED")

    def log_checkpoints(self, run_id: str, result: RunResult, experiment_id: str) -> dict[int, str]:
        """Every checkpoint as a LoggedModel (PENDING until finish_run), its state dict as a run artifact.

        Returns step -> model id. The state dicts (checkpoints/final.pt, checkpoints/step-NNNNNN.pt) are
        what `reproduce` reads: plain tensors, loaded with weights_only=True, no code unpickled.
        """
        artifact_uri = self.artifact_uris.pop(run_id, None)
        if result.final_weights is None:
            return {}
        import torch
        from mlflow.entities import LoggedModelStatus

        final_step = len(result.losses) - 1
        weights_by_step = {step: {name: torch.as_tensor(tensor) for name, tensor in weights.items()}
                           for step, weights in {**result.checkpoints, final_step: result.final_weights}.items()}
        params = result.spec.params()
        models: dict[int, str] = {}
        artifact_uri = artifact_uri or self.client.get_run(run_id).info.artifact_uri
        try:
            with ArtifactFolder(self.client, run_id, artifact_uri) as run_artifacts:
                state_dicts = run_artifacts / "checkpoints"
                state_dicts.mkdir(exist_ok=True)
                for step, weights in sorted(weights_by_step.items()):
                    final = step == final_step
                    model = self.client.create_logged_model(
                        experiment_id, name="model" if final else f"model-step-{step}", source_run_id=run_id,
                        params=params)
                    models[step] = model.model_id
                    self._save_model(model, run_id, weights)
                    torch.save(weights, state_dicts / ("final.pt" if final else f"step-{step:06d}.pt"))
        except BaseException:
            for model_id in models.values():
                self.client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
            raise
        return models

    def _save_model(self, model: Any, run_id: str, weights: dict[str, Any]) -> None:
        """The LeNet with these weights in MLflow's pytorch format, as the LoggedModel's artifacts."""
        import mlflow.pytorch
        import torch
        from mlflow.models import Model

        from tinytrain.model import LeNet

        net = LeNet()
        net.load_state_dict(weights)
        requirements = [f"torch=={torch.__version__.split('+')[0]}", "tinytrain"]
        with ArtifactFolder(self.client, model.model_id, model.artifact_location, of_model=True) as folder:
            # pickle: 0.06 s a model against 0.2 s for pt2; explicit requirements: inference costs seconds.
            mlflow.pytorch.save_model(
                net, str(folder), pip_requirements=requirements, serialization_format="pickle",
                mlflow_model=Model(artifact_path=model.artifact_location, model_uuid=model.model_id,
                                   run_id=run_id, model_id=model.model_id))

    def get_run(self, run_id: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException:
            raise TrackingError(f"no run '{run_id}' in {self.uri}: check the id (the UI or `tinytrain compare` "
                                "shows them) and --tracking-uri") from None

    def losses(self, run_id: str) -> list[float]:
        """The logged `loss` of a run, in step order."""
        return [metric.value for metric in
                sorted(self.client.get_metric_history(run_id, LOSS), key=lambda metric: metric.step)]

    def read_text(self, run_id: str, artifact: str) -> str:
        import mlflow.artifacts

        self.get_run(run_id)
        folder = artifact.rpartition("/")[0] or None
        try:  # list first: artifacts that cannot be reached are not reported as a missing file
            if artifact in {item.path for item in self.client.list_artifacts(run_id, folder)}:
                return mlflow.artifacts.load_text(f"runs:/{run_id}/{artifact}")
        except Exception as error:
            raise TrackingError(f"cannot read the artifacts of run {run_id} in {self.uri}: "
                                f"{str(error).splitlines()[0]}") from None
        raise TrackingError(f"run {run_id} has no {artifact}: give the id of a sweep's parent run")

    def end_run(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)

    def delete_run(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    def end_sweep(self, parent_run_id: str, counts: SweepCounts, status: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        figures = {f"runs_{name}": getattr(counts, name)
                   for name in ("total", "skipped", "converged", "diverged", "failed", "killed", "replaced")}
        self.client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in figures.items()])
        self.client.set_terminated(parent_run_id, status)


def finished_keys_readonly(uri: str, experiment_name: str) -> dict[str, str]:
    """run key -> run id of the finished runs of an experiment, read without importing MLflow.

    For `--dry-run`, which must stay instant: a read-only SQL query on a SQLite store (MLflow's schema:
    tables experiments, runs, tags), MLflow's REST API on a server. Tests hold both equal to what
    MLflow's own search gives (Store.finished_runs_by_key).
    """
    if is_http(uri):
        return _finished_keys_rest(uri, experiment_name)
    query = """
        SELECT key_tag.value, runs.run_uuid FROM runs
        JOIN experiments ON experiments.experiment_id = runs.experiment_id
        JOIN tags AS key_tag ON key_tag.run_uuid = runs.run_uuid AND key_tag.key = ?
        JOIN tags AS outcome_tag ON outcome_tag.run_uuid = runs.run_uuid AND outcome_tag.key = ?
        WHERE experiments.name = ? AND runs.status = 'FINISHED' AND runs.lifecycle_stage = 'active'
          AND outcome_tag.value IN (?, ?)
        ORDER BY runs.start_time"""
    return dict(_query_sqlite(uri, query, (RUN_KEY, OUTCOME, experiment_name, *FINISHED_OUTCOMES)))


def experiments_readonly(uri: str) -> list[tuple[str, str]]:
    """(experiment id, name) of the active experiments of a SQLite store that hold runs, without MLflow."""
    query = """SELECT experiments.experiment_id, experiments.name FROM experiments
               WHERE experiments.lifecycle_stage = 'active'
                 AND EXISTS (SELECT 1 FROM runs WHERE runs.experiment_id = experiments.experiment_id)
               ORDER BY experiments.experiment_id"""
    return [(str(experiment_id), name) for experiment_id, name in _query_sqlite(uri, query, ())]


def _query_sqlite(uri: str, query: str, parameters: tuple = (), timeout: float = 20) -> list[tuple]:
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


def _finished_keys_rest(uri: str, experiment_name: str) -> dict[str, str]:
    import json
    from urllib.parse import quote

    def call(path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}", data=data,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    try:
        experiment = call(f"experiments/get-by-name?experiment_name={quote(experiment_name)}")["experiment"]
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return {}
        raise TrackingError(f"the tracking server at {uri} answered {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        raise TrackingError(f"cannot reach the tracking server at {uri}: {error}") from None
    finished, token = {}, None
    while True:
        body = {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000,
                "filter": "attributes.status = 'FINISHED'", "order_by": ["attributes.start_time ASC"]}
        if token:
            body["page_token"] = token
        page = call("runs/search", body)
        for run in page.get("runs", []):
            tags = {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}
            if tags.get(OUTCOME) in FINISHED_OUTCOMES and RUN_KEY in tags:
                finished[tags[RUN_KEY]] = run["info"]["run_id"]
        token = page.get("next_page_token")
        if not token:
            return finished


def read_losses(uri: str, run_id: str) -> list[float]:
    return Store(uri).losses(run_id)


def read_sweep_experiment(uri: str, parent_run_id: str) -> str:
    """The resolved experiment file that a sweep's parent run keeps."""
    return Store(uri).read_text(parent_run_id, EXPERIMENT_FILE)


@dataclass
class LoggedRun:
    """What reproduce needs of a logged run: its spec (from its params alone), losses and checkpoints."""

    run_id: str
    spec: RunSpec
    losses: list[float]
    checkpoints: dict[int, dict]  # step -> state dict, loaded with weights_only=True (no code unpickled)
    tags: dict[str, str]


def read_logged_run(uri: str, run_id: str) -> LoggedRun:
    """Read a run's record back: params -> spec, the `loss` history, every checkpoint's state dict."""
    import torch

    store = Store(uri)
    run = store.get_run(run_id)
    tags = run.data.tags
    if tags.get(KIND) != "run":
        raise TrackingError(f"run {run_id} is not a tinytrain run of a grid cell (a sweep's parent?): give the "
                            "id of one of its nested runs")
    try:
        spec = RunSpec.from_params(run.data.params)
    except (KeyError, ValueError) as error:
        raise TrackingError(f"run {run_id} lacks the params to rebuild it ({error}): was it logged by "
                            "tinytrain?") from None
    losses = store.losses(run_id)
    checkpoints: dict[int, dict] = {}
    artifacts = [item.path for item in store.client.list_artifacts(run_id, "checkpoints")]
    if artifacts:
        with tempfile.TemporaryDirectory() as folder:
            local = Path(store.client.download_artifacts(run_id, "checkpoints", folder))
            for path in artifacts:
                name = Path(path).name
                step = len(losses) - 1 if name == "final.pt" else int(name.removeprefix("step-").removesuffix(".pt"))
                checkpoints[step] = torch.load(local / name, weights_only=True)
    return LoggedRun(run_id, spec, losses, checkpoints, dict(tags))


class Recorder:
    """The single writing path of a sweep: opens it, records each run's start and result, closes it.

    Calls come in the order the sweep makes them; results are written as they arrive. The same object
    runs in this process or, behind writer.BackgroundRecorder, in a process of its own.
    """

    def __init__(self, uri: str):
        self.uri = uri
        self.store: Store | None = None
        self.experiment_id = ""
        self.parent_run_id: str | None = None
        self.run_ids: dict[str, str] = {}  # key -> run id of the runs this sweep started
        self.replace: dict[str, str] = {}  # key -> finished run id that a --force re-run replaces
        self.counts = SweepCounts()
        self.environment: dict[str, str] = {}
        self.experiment: Experiment | None = None
        self.logged_losses: dict[str, tuple[float, ...]] = {}  # key -> losses of the runs this sweep wrote

    def open(self, experiment: Experiment, specs: list[RunSpec], finished: dict[str, str], force: bool = False,
             with_parent: bool = True) -> None:
        """Find the experiment, mark abandoned runs FAILED, start the parent run.

        `finished` (run key -> run id) is what the sweep read before it started training: those cells are
        skipped, or, with force, replaced once their new run is finished.
        """
        self.store = Store(self.uri)
        self.experiment = experiment
        experiment_id = self.experiment_id = self.counts.experiment_id = self.store.experiment_id(experiment.name)
        self.counts.recovered = self.store.recover_abandoned(experiment_id)
        keys = {spec.key for spec in specs}
        done = {key: run_id for key, run_id in finished.items() if key in keys}
        if force:
            self.replace, done = done, {}
        self.environment = environment()
        self.counts.total = len(specs)
        self.counts.skipped = len(done)
        if with_parent:
            self.parent_run_id = self.store.start_sweep(experiment_id, experiment, len(specs), self.environment)
            self.counts.parent_run_id = self.parent_run_id

    def run_started(self, spec: RunSpec) -> None:
        self.run_ids[spec.key] = self.store.start_run(self.experiment_id, self.parent_run_id, spec, self.environment)

    def run_finished(self, result: RunResult) -> None:
        key = result.spec.key
        run_id = self.run_ids.get(key) or self.store.start_run(
            self.experiment_id, self.parent_run_id, result.spec, self.environment)
        self.store.finish_run(run_id, result, self.experiment_id)
        self.run_ids.pop(key, None)
        self.counts.run_ids[key] = run_id
        self.logged_losses[key] = tuple(math.copysign(sys.float_info.max, v) if math.isinf(v) else v
                                        for v in result.losses)  # as MLflow stores them
        setattr(self.counts, result.outcome, getattr(self.counts, result.outcome) + 1)
        if result.outcome != "failed" and key in self.replace:
            self.store.delete_run(self.replace.pop(key))  # soft delete: one finished run per cell
            self.counts.replaced += 1

    def close(self, status: str = "FINISHED", reason: str | None = None) -> SweepCounts:
        """End the runs still open (KILLED when interrupted) and the parent run; return the counts.

        A sweep that ran to its end, with any finished cell, first gets its summary (table and loss curves).
        """
        for run_id in self.run_ids.values():
            if reason:
                self.store.client.set_tag(run_id, ERROR, reason)
            self.store.end_run(run_id, "KILLED" if status == "KILLED" else "FAILED")
            self.counts.killed += status == "KILLED"
            self.counts.failed += status != "KILLED"
        self.run_ids.clear()
        if self.parent_run_id:
            if reason:
                self.store.client.set_tag(self.parent_run_id, ERROR, reason)
            if status == "FINISHED" and self.counts.skipped + self.counts.converged + self.counts.diverged:
                self._log_sweep_summary()
            self.store.end_sweep(self.parent_run_id, self.counts, status)
        checkpoint_sqlite(self.uri)  # everything written now survives an OS crash too
        return self.counts

    def _log_sweep_summary(self) -> None:
        """The compare table (markdown, csv) and the loss curves as artifacts of the parent run, for the UI.

        A summary that cannot be made is reported and tagged on the parent; it never fails the sweep.
        """
        import logging

        from tinytrain import report

        try:
            sweep = sweep_record(self.store, self.parent_run_id, self.experiment, with_losses=True,
                                 known_losses=self.logged_losses)
            with tempfile.TemporaryDirectory() as folder:
                report.write_sweep_summary(sweep, Path(folder))
                self.store.client.log_artifacts(self.parent_run_id, folder)
        except Exception as error:  # noqa: BLE001 - the runs are logged; a missing picture must not undo that
            message = f"{type(error).__name__}: {error}"
            logging.getLogger("tinytrain").warning("no summary logged for sweep %s: %s",
                                                   self.parent_run_id, message)
            self.store.client.set_tag(self.parent_run_id, ERROR, f"summary: {message}"[:5000])



# ---------------------------------------------------------------------------------------------------------
# Reading sweeps for reports
#
# A sweep skips the cells that earlier sweeps finished, so its runs are not just the children of its parent
# run. Its cells come from the experiment file the parent keeps; the run of each cell is the finished run
# with the cell's run key, whichever sweep made it.


@dataclass(frozen=True)
class CellRun:
    """The finished run of one cell of a sweep, in plain values: what compare and plot need."""

    run_id: str
    key: str
    optimizer: str
    lr: float
    seed: int
    outcome: str  # converged or diverged
    initial_loss: float
    final_loss: float
    losses: tuple[float, ...] = ()  # `loss` at steps 0..steps (shorter if it diverged); read on request

    @property
    def diverged(self) -> bool:
        return self.outcome == "diverged"


@dataclass(frozen=True)
class SweepRecord:
    """A sweep as the store holds it: which experiment, and the finished run of each of its cells."""

    experiment: str
    experiment_id: str
    parent_run_id: str
    steps: int
    cells: int  # cells in the sweep's grid
    runs: tuple[CellRun, ...]  # grid order: optimizer, then lr, then seed
    missing: tuple[str, ...]  # run names of the cells without a finished run (failed, killed, not yet run)


def read_sweep(uri: str, experiment: str | None = None, parent_run_id: str | None = None,
               with_losses: bool = False) -> SweepRecord:
    """A sweep of the store: the given parent run, else the latest sweep of the experiment.

    The experiment defaults to the default experiment file's (optimizer-grid), or to the parent run's.
    """
    if is_http(uri):
        check_store(uri)  # one line now, rather than MLflow's retries and a traceback
    elif not sqlite_path(uri).exists():  # opening it would create an empty store
        raise TrackingError(f"no store at {sqlite_path(uri)}: run `tinytrain sweep` first, or give the store "
                            "with --tracking-uri")
    store = Store(uri)
    if parent_run_id is None:
        name = experiment or DEFAULTS["name"]
        experiment_id = store.experiment_id(name, create=False)
        if experiment_id is None:
            raise TrackingError(f"no experiment '{name}' in {uri}: run `tinytrain sweep` first, or check "
                                "--experiment and --tracking-uri")
        latest = store.client.search_runs([experiment_id], f"tags.`{KIND}` = 'sweep'",
                                          order_by=["attributes.start_time DESC"], max_results=1)
        if not latest:
            raise TrackingError(f"experiment '{name}' has no sweep yet: run `tinytrain sweep` first")
        parent_run_id = latest[0].info.run_id
    record = sweep_record(store, parent_run_id, with_losses=with_losses)
    if experiment is not None and record.experiment != experiment:
        raise TrackingError(f"run {parent_run_id} is a sweep of experiment '{record.experiment}', not "
                            f"'{experiment}': drop --experiment or give a sweep of '{experiment}'")
    return record


def sweep_record(store: Store, parent_run_id: str, experiment: Experiment | None = None,
                 with_losses: bool = False, known_losses: dict[str, tuple[float, ...]] | None = None) -> SweepRecord:
    """Resolve a sweep's cells to their finished runs (experiment: the sweep's own, if already loaded).

    known_losses (run key -> losses as stored) spares reading back the histories a Recorder just wrote.
    """
    known_losses = known_losses or {}
    parent = store.get_run(parent_run_id)
    if parent.data.tags.get(KIND) != "sweep":
        raise TrackingError(f"run {parent_run_id} is not a sweep's parent run (tag {KIND}=sweep): give the "
                            "id of a sweep, or leave --sweep out for the latest one")
    if experiment is None:
        text = store.read_text(parent_run_id, EXPERIMENT_FILE)
        experiment = load_experiment(f"run {parent_run_id}", text=text)
    experiment_id = parent.info.experiment_id
    finished = store.finished_runs_by_key(experiment_id)
    runs, missing = [], []
    for spec in experiment.specs():
        run = finished.get(spec.key)
        if run is None:
            missing.append(spec.run_name)
            continue
        metrics = run.data.metrics
        runs.append(CellRun(
            run_id=run.info.run_id, key=spec.key, optimizer=spec.optimizer, lr=spec.lr, seed=spec.seed,
            outcome=run.data.tags[OUTCOME], initial_loss=metrics.get("initial_loss", math.nan),
            final_loss=metrics.get("final_loss", math.nan),
            losses=(known_losses.get(spec.key) or tuple(store.losses(run.info.run_id))) if with_losses else (),
        ))
    return SweepRecord(experiment.name, experiment_id, parent_run_id, experiment.settings["steps"],
                       len(runs) + len(missing), tuple(runs), tuple(missing))


# ---------------------------------------------------------------------------------------------------------
# The MLflow UI and server on a store


def server_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> tuple[list[str], dict[str, str]]:
    """`mlflow server` on a SQLite store, its artifacts served through it; and the environment it needs.

    One web worker and no job consumers: tinytrain needs neither, and on two cores they slow all else.
    """
    if is_http(uri):
        raise TrackingError(f"{uri} is already a server: open {uri} in a browser")
    artifacts = sqlite_path(uri).parent / "artifacts"
    command = [
        str(Path(sys.executable).with_name("mlflow")), "server",
        "--backend-store-uri", uri,
        "--serve-artifacts", "--artifacts-destination", artifacts.as_uri(),
        "--host", host, "--port", str(port), "--workers", "1",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return command, env
