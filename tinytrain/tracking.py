"""Every MLflow call of tinytrain lives here: where the store is, and how runs are written and read.

The data contract (see the README): one parent run per sweep, one nested child run per grid cell with the
cell's params, its `loss` at every step, `initial_loss`, `final_loss`, tags (run key, outcome, environment)
and its final weights as an MLflow model at the final step. A Recorder is the single writing path of a
sweep: the sweep hands it specs and results, in this process or in a background writer process.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinytrain.spec import PROJECT_ROOT, Experiment, RunSpec

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
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "tinytrain", "pyproject.toml"))
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
    import mlflow
    import torch

    return {
        "tinytrain.python": platform.python_version(),
        "tinytrain.torch": torch.__version__,
        "tinytrain.mlflow": mlflow.__version__,
        "tinytrain.platform": platform.platform(),
        "tinytrain.host": socket.gethostname(),
        **git_state(),
    }


# ---------------------------------------------------------------------------------------------------------
# Writing


@dataclass
class OpenedSweep:
    """What the store says before a sweep runs."""

    experiment_id: str
    parent_run_id: str | None
    finished: dict[str, str]  # run key -> run id of the finished run of each done cell
    recovered: int  # runs left RUNNING by dead processes, now marked FAILED


@dataclass
class SweepCounts:
    total: int = 0
    skipped: int = 0
    converged: int = 0
    diverged: int = 0
    failed: int = 0
    killed: int = 0
    replaced: int = 0
    run_ids: dict[str, str] = field(default_factory=dict)  # key -> run id of every run written


class Store:
    """An MLflow tracking store, through MlflowClient, with tinytrain's data contract."""

    def __init__(self, uri: str):
        import logging

        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no schema-migration chatter on a new store
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # the pickle-format notice, once a model
        self.uri = uri
        mlflow.set_tracking_uri(uri)  # mlflow.pytorch.log_model resolves the store globally
        self.client = mlflow.MlflowClient(uri)

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

    def finished_runs(self, experiment_id: str) -> dict[str, str]:
        """run key -> run id of every finished (converged or diverged) run of the experiment."""
        runs = self.search(experiment_id, "attributes.status = 'FINISHED'")
        return {
            run.data.tags[RUN_KEY]: run.info.run_id
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
        return run.info.run_id

    def finish_run(self, run_id: str, result: RunResult) -> None:
        """Log a run's losses, outcome and checkpoints, then close it (FINISHED, or FAILED if it raised)."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        metrics = [Metric(LOSS, value, now, step) for step, value in enumerate(result.losses)]
        if result.losses:
            metrics.append(Metric("initial_loss", result.initial_loss, now, 0))
            metrics.append(Metric("final_loss", result.final_loss, now, len(result.losses) - 1))
        metrics.append(Metric("train_seconds", result.train_seconds, now, 0))
        tags = [RunTag(OUTCOME, result.outcome)]
        tags += [RunTag(f"tinytrain.{key}", value) for key, value in result.runtime.items()]
        if result.error:
            tags.append(RunTag(ERROR, result.error[:5000]))
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        if result.final_weights is not None:
            self.log_checkpoints(run_id, result)
        self.client.set_terminated(run_id, "FAILED" if result.outcome == "failed" else "FINISHED")

    def log_checkpoints(self, run_id: str, result: RunResult) -> None:
        """Every checkpoint as an MLflow model at its step, plus its state dict (safe to load) as an artifact."""
        import mlflow.pytorch
        import torch

        from tinytrain.model import LeNet

        final_step = len(result.losses) - 1
        weights_by_step = {**result.checkpoints, final_step: result.final_weights}
        requirements = [f"torch=={torch.__version__.split('+')[0]}", "tinytrain"]
        with tempfile.TemporaryDirectory() as folder:
            for step, weights in sorted(weights_by_step.items()):
                final = step == final_step
                net = LeNet()
                net.load_state_dict(weights)
                # pickle: 0.06 s a model against 0.2 s for pt2; explicit requirements: inference costs seconds.
                mlflow.pytorch.log_model(
                    net, name="model" if final else f"model-step-{step}", step=step, run_id=run_id,
                    pip_requirements=requirements, serialization_format="pickle",
                )
                path = Path(folder) / ("final.pt" if final else f"step-{step:06d}.pt")
                torch.save(weights, path)
                self.client.log_artifact(run_id, str(path), "checkpoints")

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
        try:
            return mlflow.artifacts.load_text(f"runs:/{run_id}/{artifact}")
        except Exception:
            raise TrackingError(f"run {run_id} has no {artifact}: give the id of a sweep's parent run") from None

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
    tables experiments, runs, tags), MLflow's REST API on a server. A test holds it equal to
    Store.finished_runs.
    """
    if is_http(uri):
        return _finished_keys_rest(uri, experiment_name)
    import sqlite3

    path = sqlite_path(uri)
    if not path.exists():
        return {}
    query = """
        SELECT key_tag.value, runs.run_uuid FROM runs
        JOIN experiments ON experiments.experiment_id = runs.experiment_id
        JOIN tags AS key_tag ON key_tag.run_uuid = runs.run_uuid AND key_tag.key = ?
        JOIN tags AS outcome_tag ON outcome_tag.run_uuid = runs.run_uuid AND outcome_tag.key = ?
        WHERE experiments.name = ? AND runs.status = 'FINISHED' AND runs.lifecycle_stage = 'active'
          AND outcome_tag.value IN (?, ?)
        ORDER BY runs.start_time"""
    connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        rows = connection.execute(query, (RUN_KEY, OUTCOME, experiment_name, *FINISHED_OUTCOMES)).fetchall()
    except sqlite3.Error as error:
        raise TrackingError(f"cannot read the store {path}: {error}") from None
    finally:
        connection.close()
    return dict(rows)


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

    def open(self, experiment: Experiment, specs: list[RunSpec], skip_finished: bool = True,
             with_parent: bool = True) -> OpenedSweep:
        """Find the experiment, recover abandoned runs, learn which cells are done, start the parent run."""
        self.store = Store(self.uri)
        experiment_id = self.experiment_id = self.store.experiment_id(experiment.name)
        recovered = self.store.recover_abandoned(experiment_id)
        finished = self.store.finished_runs(experiment_id)
        keys = {spec.key for spec in specs}
        finished = {key: run_id for key, run_id in finished.items() if key in keys}
        if not skip_finished:
            self.replace, finished = finished, {}
        self.environment = environment()
        self.counts.total = len(specs)
        self.counts.skipped = len(finished)
        if with_parent:
            self.parent_run_id = self.store.start_sweep(experiment_id, experiment, len(specs), self.environment)
        return OpenedSweep(experiment_id, self.parent_run_id, finished, recovered)

    def run_started(self, spec: RunSpec) -> None:
        self.run_ids[spec.key] = self.store.start_run(self.experiment_id, self.parent_run_id, spec, self.environment)

    def run_finished(self, result: RunResult) -> None:
        key = result.spec.key
        run_id = self.run_ids.get(key) or self.store.start_run(
            self.experiment_id, self.parent_run_id, result.spec, self.environment)
        self.store.finish_run(run_id, result)
        self.run_ids.pop(key, None)
        self.counts.run_ids[key] = run_id
        setattr(self.counts, result.outcome, getattr(self.counts, result.outcome) + 1)
        if result.outcome != "failed" and key in self.replace:
            self.store.delete_run(self.replace.pop(key))  # soft delete: one finished run per cell
            self.counts.replaced += 1

    def close(self, status: str = "FINISHED") -> SweepCounts:
        """End the runs still open (KILLED when interrupted) and the parent run; return the counts."""
        for run_id in self.run_ids.values():
            self.store.end_run(run_id, "KILLED")
            self.counts.killed += 1
        self.run_ids.clear()
        if self.parent_run_id:
            self.store.end_sweep(self.parent_run_id, self.counts, status)
        return self.counts

    def ping(self) -> bool:
        return True



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
