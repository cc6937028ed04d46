"""Every write to the store, through MLflow's client, in the shape of tinytrain's data contract.

A parent run per sweep, a nested run per grid cell with its params, losses, outcome and checkpoints: as its
`record` setting says, each an MLflow LoggedModel linked to the run's metrics at its step (model), a weights-only
state dict among the run's artifacts with a LoggedModel of each cell's median seed (weights), or none.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tinytrain.results import DIVERGED, FAILED, RunResult
from tinytrain.spec import Experiment, RunSpec
from tinytrain.tracking.artifacts import ArtifactFolder, ServerArtifactsOnSqlite
from tinytrain.tracking.contract import (
    CELL_MODEL,
    CELL_SUMMARY,
    CONFIRMS,
    ERROR,
    EXPERIMENT_FILE,
    FINISHED_OUTCOMES,
    KIND,
    LEASE,
    LOSS,
    MLMODEL,
    MODEL_DATA,
    OUTCOME,
    OWNER,
    PARENT,
    RECORD_MODEL,
    RECORD_WEIGHTS,
    RUN_KEY,
    RUN_NAME_TAG,
    TRAINING_STATE,
    TrackingError,
    weights_artifact,
)
from tinytrain.tracking.location import HTTP_BOUNDS, QUIET, artifact_root, is_http, server_failure
from tinytrain.tracking.provenance import owner_is_gone, process_owner
from tinytrain.tracking.sqlite import TunedConnections, create_store_from_template, sqlite_defaults_only

WON, TAKEN, DONE = "won", "taken", "done"  # what claiming a cell gives (Claim.state)
SETTLE_SECONDS = 0.05  # the least a block of claims waits before it reads its cells' claims back
# How SQLite and PostgreSQL say that an insert broke a unique key (MLflow passes their message on)
UNIQUE_KEY_BROKEN = ("UNIQUE constraint failed", "duplicate key value violates unique constraint")
# A server's FINISHED cell runs are read again from the last read's time less this (clocks, late commits)
FINISHED_WINDOW_SECONDS = 30.0


@dataclass(frozen=True)
class Claim:
    """The answer to claiming a cell: this sweep holds it (WON, run_id is the cell's RUNNING run, its lease
    until `lease_until` unless renewed), another sweep holds it (TAKEN, until `lease_until` unless renewed),
    or a finished run has it (DONE, run_id)."""

    state: str
    run_id: str | None = None
    lease_until: float = 0.0
    took_over: int = 0  # lapsed claims of other sweeps marked FAILED to take this one


@dataclass(frozen=True)
class CellRunState:
    """What claiming reads of one run with a cell's key (plain values: decide_claim is a pure function)."""

    run_id: str
    status: str
    outcome: str | None
    start_time: int
    lease_until: float | None  # None: not a claim (a run of a sweep that does not share, or of an old store)
    owner_gone: bool

    @property
    def done(self) -> bool:
        return self.status == "FINISHED" and self.outcome in FINISHED_OUTCOMES

    def live_claim(self, now: float) -> bool:
        return (
            self.status == "RUNNING" and self.lease_until is not None and self.lease_until > now and not self.owner_gone
        )

    def lapsed_claim(self, now: float) -> bool:
        return self.status == "RUNNING" and self.lease_until is not None and not self.live_claim(now)


def decide_claim(runs: list[CellRunState], mine: str | None, now: float) -> Claim | None:
    """Who holds a cell, from its runs as read after `mine` (this sweep's claim, if it made one) was created;
    None if nobody does (no claim of this sweep, and no live claim of another).

    A finished run ends it (DONE). Else the earliest-created live claim wins (start time, then run id:
    every sweep reads the same values, so all agree), whichever sweep reads it. A claim committed late with
    an earlier start time than one that already won is seen at the winner's lease renewal or before its
    result is recorded (Recorder.run_finished), where the later one yields.
    """
    done = [run for run in runs if run.done and run.run_id != mine]
    if done:
        return Claim(DONE, done[0].run_id)
    live = sorted((run for run in runs if run.live_claim(now)), key=lambda run: (run.start_time, run.run_id))
    if not live:
        return None
    if live[0].run_id == mine:
        return Claim(WON, mine)
    return Claim(TAKEN, live[0].run_id, max(run.lease_until for run in live))


def _holding(states: dict[str, list[CellRunState]], held: dict[str, str], now: float) -> dict[str, Claim]:
    """Whether this sweep's claims (key -> run id) still hold their cells, from the cells' runs as read."""
    verdicts = {}
    for key, run_id in held.items():
        runs = states.get(key, [])
        mine = next((run for run in runs if run.run_id == run_id), None)
        if mine is None or mine.status != "RUNNING":  # taken over by another sweep after its lease lapsed
            verdicts[key] = Claim(TAKEN)
            continue
        # this sweep's own claim is live whatever its lease says: nobody took it over
        runs = [run if run.run_id != run_id else replace(run, lease_until=math.inf, owner_gone=False) for run in runs]
        verdicts[key] = decide_claim(runs, run_id, now) or Claim(WON, run_id)
    return verdicts


def _cell_run_state(
    run_id: str, status: str, outcome: str | None, start_time: int, lease: str | None, owner: str | None
) -> CellRunState:
    return CellRunState(
        run_id,
        status,
        outcome,
        start_time,
        float(lease) if lease is not None else None,
        status == "RUNNING" and owner_is_gone(owner or ""),
    )


def _state_of(run: Any) -> CellRunState:
    tags = run.data.tags
    return _cell_run_state(
        run.info.run_id, run.info.status, tags.get(OUTCOME), run.info.start_time, tags.get(LEASE), tags.get(OWNER)
    )


def model_name(spec: RunSpec, step: int | None = None) -> str:
    """A checkpoint's LoggedModel is named after its run, and its step if not the last: adam-lr0_001-seed0
    for run adam-lr0.001-seed0 (MLflow forbids '.', '/', ':', '%' and quotes in a model's name)."""
    name = spec.run_name.replace(".", "_")
    return name if step is None else f"{name}-step{step}"


def cell_model_name(spec: RunSpec) -> str:
    """The LoggedModel of a cell's median seed (record = weights): adam-lr0_001-median-seed3."""
    name, _, seed = model_name(spec).rpartition("-seed")
    return f"{name}-median-seed{seed}"


def checkpoint_files(result: RunResult) -> dict[int, bytes]:
    """step -> the weights file (bytes) of each checkpoint a run keeps: every checkpoint_every step's and its
    final one; none for a run without final weights (diverged, failed)."""
    from tinytrain.tracking.model_files import weights_file_bytes

    if result.final_weights is None:
        return {}
    final_step = len(result.losses) - 1
    return {
        step: weights_file_bytes(weights)
        for step, weights in sorted({**result.checkpoints, final_step: result.final_weights}.items())
    }


def diverged_run_name(spec: RunSpec) -> str:
    """The UI's name of a run that diverged: adam-lr0.1-seed0 (diverged)."""
    return f"{spec.run_name} (diverged)"


def _link(experiment: Experiment) -> dict[str, str]:
    """A confirmation sweep's tag naming the tuning sweep it confirms (none on other sweeps)."""
    return {CONFIRMS: experiment.confirms} if experiment.confirms else {}


class Store:
    """An MLflow tracking store, through MlflowClient, with tinytrain's data contract."""

    def __init__(self, uri: str, writer: bool = False):
        """Open the store; `writer` also tunes this process's SQLite connections to it for writing.

        What opening changes in this process (MLflow's log levels, its printing of run URLs, the
        repository of server artifacts, the SQLite tuning) lasts until close(), or the end of a with block.
        """
        import logging

        for name, value in {**QUIET, **HTTP_BOUNDS}.items():  # before MLflow is imported
            os.environ.setdefault(name, value)
        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no schema-migration chatter on a new store
        # a server's failure is the command's one line (server_failure), not a warning before it as well
        logging.getLogger("mlflow.exceptions").setLevel(logging.ERROR)
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # the pickle-format notice, once a model
        # Over HTTP MLflow prints "View run ... at" for each run it ends (and fetches the run to do so).
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri = uri
        self._undo: list[Any] = [ServerArtifactsOnSqlite(uri).install()]
        if writer and not is_http(uri) and not sqlite_defaults_only():
            self._undo.append(TunedConnections(uri).install())
        create_store_from_template(uri)  # before MLflow opens it: a new store costs a copy, not migrations
        self.client = mlflow.MlflowClient(uri)
        self.artifact_uris: dict[str, str] = {}  # run id -> artifact URI, of the runs started and not finished
        self._model_files: ModelFiles | None = None
        # claims over HTTP (cell_states): experiment id -> when FINISHED cell runs were last read, and those seen
        self._finished_read_at: dict[str, float] = {}
        self._finished_seen: dict[str, dict[str, tuple[str, CellRunState]]] = {}

    def close(self) -> None:
        """Undo what opening the store changed in this process (see __init__)."""
        while self._undo:
            self._undo.pop().remove()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # experiments -------------------------------------------------------------------------------------
    def experiment_id(self, name: str, create: bool = True) -> str | None:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                raise TrackingError(
                    f"experiment '{name}' is deleted in {self.uri}: restore it with "
                    f"`mlflow experiments restore` or pick another name"
                )
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

    def set_experiment_tags(self, experiment_id: str, tags: dict[str, str]) -> None:
        """Experiment tags, such as the UI's prepared views of a sweep (views.py)."""
        for key, value in tags.items():
            self.client.set_experiment_tag(experiment_id, key, value)

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
            tags={KIND: "sweep", OWNER: process_owner(), "tinytrain.cells": str(cells), **tags, **_link(experiment)},
        )
        run_id = run.info.run_id
        self.client.log_text(run_id, experiment.to_toml(), EXPERIMENT_FILE)
        return run_id

    def start_run(self, experiment_id: str, parent_run_id: str | None, spec: RunSpec, tags: dict[str, str]) -> str:
        """Create a cell's run, RUNNING, with its tags; its params come with its results (finish_run)."""
        run_tags = {KIND: "run", RUN_KEY: spec.key, OWNER: process_owner(), **tags}
        if parent_run_id:
            run_tags[PARENT] = parent_run_id
        run = self.client.create_run(experiment_id, run_name=spec.run_name, tags=run_tags)
        self.artifact_uris[run.info.run_id] = run.info.artifact_uri
        return run.info.run_id

    # claims: sweeps that share a grid ------------------------------------------------------------------
    def cell_states(self, experiment_id: str, keys: list[str]) -> dict[str, list[CellRunState]]:
        """run key -> the runs claiming decides on, of each of the given cells, in one read: the cell's active
        runs (KIND = run) that are RUNNING (claims), or FINISHED and written by another process (this one
        knows what it finished). Cells without such a run are left out.

        A SQLite store is read with one plain query (sqlite.cell_states_readonly); a server with MLflow's
        search, which cannot filter on a list of tags: the experiment's RUNNING cell runs, then the FINISHED
        ones of other processes, the whole experiment once and afterwards only those that ended since the
        last read (less FINISHED_WINDOW_SECONDS, for clocks and late commits), kept here. RUNNING is read
        first: a run that ends between the two searches is seen FINISHED, never missed.
        """
        read = self._cell_states_searched if is_http(self.uri) else self._cell_states_sqlite
        states: dict[str, list[CellRunState]] = {}
        for key, state in read(experiment_id, set(keys)):
            states.setdefault(key, []).append(state)
        return states

    def _cell_states_sqlite(self, experiment_id: str, keys: set[str]) -> list[tuple[str, CellRunState]]:
        from tinytrain.tracking.sqlite import cell_states_readonly

        me = process_owner()
        return [
            (key, _cell_run_state(run_id, status, outcome, start_time, lease, owner))
            for run_id, key, status, start_time, outcome, lease, owner in cell_states_readonly(
                self.uri, experiment_id, sorted(keys), me
            )
        ]

    def _cell_states_searched(self, experiment_id: str, keys: set[str]) -> list[tuple[str, CellRunState]]:
        """cell_states through MLflow's search (any store; a server's only way)."""
        read_at = time.time()
        cell_runs = f"tags.`{KIND}` = 'run'"
        running = self.search(experiment_id, f"attributes.status = 'RUNNING' AND {cell_runs}")
        finished_filter = f"attributes.status = 'FINISHED' AND {cell_runs} AND tags.`{OWNER}` != '{process_owner()}'"
        since = self._finished_read_at.get(experiment_id)
        if since is not None:
            finished_filter += f" AND attributes.end_time > {int((since - FINISHED_WINDOW_SECONDS) * 1000)}"
        known = self._finished_seen.setdefault(experiment_id, {})
        for run in self.search(experiment_id, finished_filter):
            if RUN_KEY in run.data.tags:
                known[run.info.run_id] = (run.data.tags[RUN_KEY], _state_of(run))
        self._finished_read_at[experiment_id] = read_at
        states = [(key, state) for key, state in known.values() if key in keys]
        states += [
            (run.data.tags[RUN_KEY], _state_of(run))
            for run in running
            if run.data.tags.get(RUN_KEY) in keys and run.info.run_id not in known  # ended meanwhile: as FINISHED
        ]
        return states

    def cell_runs(self, experiment_id: str, key: str) -> list[CellRunState]:
        """The runs claiming decides on, of one cell (see cell_states)."""
        return self.cell_states(experiment_id, [key]).get(key, [])

    def claim_cells(
        self,
        experiment_id: str,
        parent_run_id: str | None,
        specs: list[RunSpec],
        tags: dict[str, str],
        lease: float,
        held: dict[str, str] | None = None,
    ) -> tuple[list[Claim], dict[str, Claim]]:
        """Claim a block of cells for this sweep at once; each cell's run, created RUNNING with a lease, is its
        claim. Returns a Claim per spec (in order) and, for the cells in `held` (key -> run id of a claim this
        sweep already won), whether it still holds them (see holding), from the same first read.

        One read of the block's cells: a finished run or another sweep's live claim means this sweep leaves
        the cell alone; a claim whose lease lapsed (or whose process is gone) is marked FAILED and taken
        over. Then the claims are created, one wait lets claims that other sweeps made at the same moment
        reach the store, and one read back decides each cell: the earliest-created claim wins (decide_claim),
        and this sweep deletes its claims that lost. A claim committed even later than that wait is caught
        before a result is recorded (holding): the later one yields.
        """
        held = held or {}
        now = time.time()
        states = self.cell_states(experiment_id, [spec.key for spec in specs] + list(held))
        holding = _holding(states, held, now)
        claims: dict[str, Claim] = {}
        lapsed: dict[str, int] = {}
        for spec in specs:
            runs = states.get(spec.key, [])
            holder = decide_claim(runs, None, now)
            if holder is not None:
                claims[spec.key] = holder
                continue
            lapsed[spec.key] = 0
            for run in runs:
                if run.lapsed_claim(now):
                    why = "its process ended" if run.owner_gone else f"its lease lapsed at {run.lease_until:.0f}"
                    self._mark_abandoned(run.run_id, f"abandoned: {why}; another sweep took the cell over")
                    lapsed[spec.key] += 1
        created: dict[str, str] = {}
        leases: dict[str, float] = {}
        longest = 0.0
        for spec in specs:
            if spec.key in lapsed:
                started = time.monotonic()
                leases[spec.key] = time.time() + lease
                lease_tag = {LEASE: f"{leases[spec.key]:.3f}"}
                created[spec.key] = self.start_run(experiment_id, parent_run_id, spec, {**tags, **lease_tag})
                longest = max(longest, time.monotonic() - started)
        if created:
            # A claim another sweep started before one of these may still be on its way to the store (its
            # start time is its client's, its commit comes later, e.g. behind SQLite's lock): wait as long as
            # one claim took to be created, so that the two see each other and the earlier wins.
            time.sleep(min(max(longest, SETTLE_SECONDS), 1.0))
            states = self.cell_states(experiment_id, list(created))
            now = time.time()
            for key, run_id in created.items():
                decided = decide_claim(states.get(key, []), run_id, now)
                if decided is None or decided.state != WON:
                    self.release_claim(run_id, decided)
                    claims[key] = decided or Claim(TAKEN)
                else:
                    claims[key] = Claim(WON, run_id, leases[key], lapsed[key])
        return [claims[spec.key] for spec in specs], holding

    def _mark_abandoned(self, run_id: str, reason: str) -> None:
        """Mark FAILED a lapsed claim this sweep takes over. Two sweeps may take over one claim at the same
        moment: MLflow sets a tag by reading and then inserting it, so the second insert can break the tag's
        unique key (the other sweep is marking the same run). That is not an error: the run ends FAILED all
        the same, and the two sweeps' own claims are decided as any (the earliest wins)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.set_tag(run_id, ERROR, reason)
        except MlflowException as error:
            if not any(text in str(error) for text in UNIQUE_KEY_BROKEN):
                raise
        self.client.set_terminated(run_id, "FAILED")

    def claim_cell(
        self, experiment_id: str, parent_run_id: str | None, spec: RunSpec, tags: dict[str, str], lease: float
    ) -> Claim:
        """Claim one cell for this sweep (claim_cells of one)."""
        return self.claim_cells(experiment_id, parent_run_id, [spec], tags, lease)[0][0]

    def renew_lease(self, run_id: str, lease: float) -> float:
        """Push a claim's lease `lease` seconds from now; returns the new end of its lease."""
        until = time.time() + lease
        self.client.set_tag(run_id, LEASE, f"{until:.3f}")
        return until

    def holding(self, experiment_id: str, held: dict[str, str]) -> dict[str, Claim]:
        """Before claimed cells' results are recorded, for each (key -> run id of this sweep's claim) in one
        read: whether this sweep's claim still holds it (WON), or another sweep's claim that won, or a
        finished run, does (TAKEN, DONE: the result is then dropped)."""
        return _holding(self.cell_states(experiment_id, list(held)), held, time.time())

    def still_holds(self, experiment_id: str, key: str, run_id: str) -> Claim:
        """holding of one cell."""
        return self.holding(experiment_id, {key: run_id})[key]

    def release_claim(self, run_id: str, holder: Claim | None) -> None:
        """End and delete a claim that lost its cell: nothing of it stays RUNNING or among the active runs."""
        other = f": another sweep holds this cell (run {holder.run_id})" if holder and holder.run_id else ""
        self.client.set_tag(run_id, ERROR, f"released{other or ': the sweep ended before it trained this cell'}")
        self.client.set_terminated(run_id, "KILLED")
        self.client.delete_run(run_id)

    def finish_run(self, run_id: str, result: RunResult, experiment_id: str) -> None:
        """Log a run's params, losses, outcome and checkpoints, then close it (FINISHED, or FAILED if it raised).

        What a checkpoint is depends on the run's `record` setting. record = model: an MLflow LoggedModel
        linked to the run at its step, with the run's metrics at that step, as `mlflow.pytorch.log_model(step=...)`
        makes it; but built from the client calls that log_model makes, so that the run's params, metrics and
        tags go to the store once, in one batch, instead of being read back for every model (see
        log_checkpoints). record = weights: a plain weights file of the run (weights_artifact); the LoggedModel
        of each cell's median seed comes when the sweep closes (log_cell_model). record = none: no weights.
        The training state a run continues from is kept whatever the record.
        """
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param, RunTag

        files = {} if result.state is None else {TRAINING_STATE: result.state}
        if result.spec.record == RECORD_WEIGHTS:
            files.update({weights_artifact(step): data for step, data in checkpoint_files(result).items()})
        if files:
            self._save_files(run_id, files)
        models = self.log_checkpoints(run_id, result, experiment_id) if result.spec.record == RECORD_MODEL else {}
        self.artifact_uris.pop(run_id, None)
        try:
            now = int(time.time() * 1000)
            metrics = [
                Metric(name, value, now, step, model_id=models.get(step))
                for name, history in result.logged_metrics().items()
                for step, value in history
            ]
            metrics += [Metric(name, value, now, 0) for name, value in result.view_metrics().items()]
            params = [Param(key, value) for key, value in result.spec.params().items()]
            tags = [RunTag(OUTCOME, result.outcome)]
            tags += [RunTag(f"tinytrain.{key}", value) for key, value in result.runtime.items()]
            if result.error:
                tags.append(RunTag(ERROR, result.error[:5000]))
            if result.outcome == DIVERGED:  # at a glance in the UI's tables; the run's key and numbers stay as logged
                tags.append(RunTag(RUN_NAME_TAG, diverged_run_name(result.spec)))  # MLflow renames the run too
            self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
            if models:
                outputs = [LoggedModelOutput(model_id, step) for step, model_id in models.items()]
                self.client.log_outputs(run_id, outputs)
        except BaseException:
            for model_id in models.values():
                self.client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
            raise
        for model_id in models.values():
            self.client.finalize_logged_model(model_id, LoggedModelStatus.READY)
        self.client.set_terminated(run_id, "FAILED" if result.outcome == FAILED else "FINISHED")

    def log_checkpoints(self, run_id: str, result: RunResult, experiment_id: str) -> dict[int, str]:
        """Every checkpoint as a LoggedModel (PENDING until finish_run); returns step -> model id.

        The model's `data/model.pth` is the checkpoint's only copy of the weights: a plain state dict,
        which `reproduce` loads with weights_only=True (no code unpickled) and `mlflow.pytorch.load_model`
        turns into the LeNet (model_files.py).
        """
        self.artifact_uris.pop(run_id, None)
        if result.final_weights is None:
            return {}
        from mlflow.entities import LoggedModelStatus

        final_step = len(result.losses) - 1
        params = result.spec.params()
        models: dict[int, str] = {}
        try:
            for step, weights in sorted({**result.checkpoints, final_step: result.final_weights}.items()):
                model = self.client.create_logged_model(
                    experiment_id,
                    name=model_name(result.spec, None if step == final_step else step),
                    source_run_id=run_id,
                    params=params,
                )
                models[step] = model.model_id
                self._save_model(model, run_id, weights)
        except BaseException:
            for model_id in models.values():
                self.client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
            raise
        return models

    def _save_files(self, run_id: str, files: dict[str, bytes]) -> None:
        """Files of the run (path -> bytes) as its artifacts: the training state where it ended (TRAINING_STATE)
        and, with record = weights, its checkpoints' weights."""
        artifact_uri = self.artifact_uris.get(run_id) or self.client.get_run(run_id).info.artifact_uri
        with ArtifactFolder(self.client, run_id, artifact_uri) as folder:
            for name, data in files.items():
                path = folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)

    def existing_cell_models(self, experiment_id: str) -> set[str]:
        """The cells (their keys, CELL_MODEL) that have a READY LoggedModel of their median seed already."""
        from mlflow.entities import LoggedModelStatus

        found, token = set(), None
        while True:
            page = self.client.search_logged_models(
                [experiment_id], filter_string=f"tags.`{CELL_MODEL}` != ''", max_results=100, page_token=token
            )
            found.update(model.tags[CELL_MODEL] for model in page if model.status == LoggedModelStatus.READY)
            token = page.token
            if not token:
                return found

    def log_cell_model(
        self, experiment_id: str, run_id: str, spec: RunSpec, step: int, cell_key: str, tags: dict[str, str]
    ) -> str:
        """The LoggedModel of a cell's median seed (record = weights), made from the run's weights artifact at
        `step` and linked to the run there, whichever process wrote the run; returns its id."""
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus

        from tinytrain.tracking.model_files import SavedWeights

        data = self.read_artifact_bytes(run_id, weights_artifact(step))
        model = self.client.create_logged_model(
            experiment_id,
            name=cell_model_name(spec),
            source_run_id=run_id,
            params=spec.params(),
            tags={CELL_MODEL: cell_key, **tags},
        )
        try:
            self._save_model(model, run_id, SavedWeights(data))
            self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
        except BaseException:
            self.client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return model.model_id

    def read_artifact_bytes(self, run_id: str, artifact: str) -> bytes:
        """An artifact of a run: read in place where it is a local file, else downloaded."""
        from tinytrain.tracking.artifacts import local_artifact_file

        run = self.client.get_run(run_id)
        local = local_artifact_file(self.uri, run.info.artifact_uri, artifact)
        if local is not None:
            return local.read_bytes()
        with tempfile.TemporaryDirectory() as staging:
            return Path(self.client.download_artifacts(run_id, artifact, staging)).read_bytes()

    def _save_model(self, model: Any, run_id: str, weights: Any) -> None:
        """The weights in MLflow's pytorch format, as the LoggedModel's artifacts (see ModelFiles)."""
        if self._model_files is None:
            self._model_files = ModelFiles()
        with ArtifactFolder(self.client, model.model_id, model.artifact_location, of_model=True) as folder:
            self._model_files.write(folder, weights, model, run_id)

    def get_run(self, run_id: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException as error:
            line = server_failure(error, self.uri if is_http(self.uri) else None)
            if line is not None:
                raise TrackingError(line) from None
            raise TrackingError(
                f"no run '{run_id}' in {self.uri}: check the id (the UI or `tinytrain compare` "
                "shows them) and --tracking-uri"
            ) from None

    def losses(self, run_id: str) -> list[float]:
        """The logged `loss` of a run, in step order."""
        return [value for _step, value in self.history(run_id, LOSS)]

    def history(self, run_id: str, name: str) -> list[tuple[int, float]]:
        """(step, value) of a logged metric, in step order."""
        return [
            (metric.step, metric.value)
            for metric in sorted(self.client.get_metric_history(run_id, name), key=lambda metric: metric.step)
        ]

    def read_text(self, run_id: str, artifact: str) -> str:
        self.get_run(run_id)
        folder = artifact.rpartition("/")[0] or None
        try:  # list first: artifacts that cannot be reached are not reported as a missing file
            if artifact in {item.path for item in self.client.list_artifacts(run_id, folder)}:
                with tempfile.TemporaryDirectory() as staging:
                    return Path(self.client.download_artifacts(run_id, artifact, staging)).read_text()
        except Exception as error:
            raise TrackingError(
                f"cannot read the artifacts of run {run_id} in {self.uri}: {str(error).splitlines()[0]}"
            ) from None
        raise TrackingError(f"run {run_id} has no {artifact}: give the id of a sweep's parent run")

    def end_run(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)

    def delete_run(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    def log_cell_summaries(self, experiment_id: str, parent_run_id: str, cells: list[Any]) -> None:
        """A finished run per cell summary (recorder.CellSummaryRun), nested under the sweep's parent."""
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        for cell in cells:
            run_id = self.client.create_run(
                experiment_id, run_name=cell.name, tags={**cell.tags, KIND: CELL_SUMMARY, PARENT: parent_run_id}
            ).info.run_id
            metrics = [Metric(key, value, now, 0) for key, value in cell.metrics.items()]
            metrics += [
                Metric(key, value, now, step)
                for key, values in cell.curves.items()
                for step, value in enumerate(values)
            ]
            self.client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in cell.params.items()])
            self.client.set_terminated(run_id, "FINISHED")

    def end_sweep(self, parent_run_id: str, figures: dict[str, int], status: str) -> None:
        """Close a sweep's parent run with its counts of runs (runs_total, runs_skipped, ...) as metrics."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in figures.items()])
        self.client.set_terminated(parent_run_id, status)


class ModelFiles:
    """The files of an MLflow pytorch model of the LeNet whose data/model.pth is a state dict.

    `mlflow.pytorch.save_model` is slow for a model this small, most of it checking the pip requirements
    against the installed packages, the same for every model. So it runs once, on a LeNet, into a template;
    each model then gets the template's files as they are, its own MLmodel (the template's, as MLflow's
    Model class wrote it, with this model's ids and time put in as YAML strings, cheaper than dumping the
    YAML again) and its weights as a plain state dict, saved by the sweep's process (model_files.py).
    The pickle module the template names (weights_pickle) makes `mlflow.pytorch.load_model` give back the
    LeNet.

    The template depends only on the versions of MLflow, torch and Python (which its MLmodel and
    environment files name) and on how tinytrain makes it (TEMPLATE_RECIPE), so it is made once per
    combination and kept in the user's cache beside the store template: a writer that finds it never
    imports torch or mlflow.pytorch (seconds of CPU at its start). Without a cache folder it is made in memory.
    """

    FIELDS = ("artifact_path", "model_uuid", "model_id", "run_id", "utc_time_created", "model_size_bytes")
    TEMPLATE_RECIPE = 1  # bump when the template is made otherwise: older cached templates are then not used

    def __init__(self) -> None:
        folder = self.cached_template_folder()
        if not self._load(folder):
            self._make(folder)

    @classmethod
    def cached_template_folder(cls) -> Path:
        """Where the template of the installed MLflow, torch and Python is kept (keyed by their versions)."""
        import hashlib
        import importlib.metadata
        import platform

        from tinytrain.tracking.sqlite import template_cache

        versions = (
            f"mlflow {importlib.metadata.version('mlflow')} torch {importlib.metadata.version('torch')} "
            f"python {platform.python_version()} recipe {cls.TEMPLATE_RECIPE}"
        )
        return template_cache() / f"model-template-{hashlib.sha256(versions.encode()).hexdigest()[:16]}"

    def _load(self, folder: Path) -> bool:
        """The cached template's files, if it is there and whole (every placeholder once in its MLmodel)."""
        try:
            mlmodel = (folder / MLMODEL).read_text()
            files = {
                path.relative_to(folder): path.read_bytes()
                for path in sorted(folder.rglob("*"))
                if path.is_file() and path.name != MLMODEL
            }
        except OSError:
            return False
        if not files or not all(mlmodel.count(f"tinytrain-field-{name}") == 1 for name in self.FIELDS):
            return False
        self.mlmodel, self.files = mlmodel, files
        return True

    def _make(self, cache_folder: Path) -> None:
        """Make the template with mlflow.pytorch.save_model, and keep it in the cache (moved into place whole:
        a writer never reads one half made; of two made at once, the first to arrive stays)."""
        import shutil

        import mlflow.pytorch
        import torch
        from mlflow.models import Model

        from tinytrain.model import LeNet
        from tinytrain.tracking import weights_pickle

        requirements = [f"torch=={torch.__version__.split('+')[0]}", "tinytrain"]
        with tempfile.TemporaryDirectory() as folder:
            template = Path(folder) / "model"
            # pickle: a fraction of pt2's time a model; explicit requirements: inferring them costs seconds.
            mlflow.pytorch.save_model(
                LeNet(),
                str(template),
                pip_requirements=requirements,
                serialization_format="pickle",
                pickle_module=weights_pickle,
            )
            mlmodel = Model.load(str(template / MLMODEL))
            for name in self.FIELDS:
                setattr(mlmodel, name, f"tinytrain-field-{name}")
            mlmodel.save(str(template / MLMODEL))
            (template / MODEL_DATA).unlink()  # the pickled LeNet: each model has its own weights there
            if not self._load(template):
                raise TrackingError("the MLmodel template of this MLflow version lacks a field")
            try:
                cache_folder.parent.mkdir(parents=True, exist_ok=True)
                staged = Path(tempfile.mkdtemp(prefix=f".{cache_folder.name}.", dir=cache_folder.parent))
                shutil.copytree(template, staged, dirs_exist_ok=True)
                try:
                    staged.rename(cache_folder)
                except OSError:  # another writer put one there first: it is the same
                    shutil.rmtree(staged, ignore_errors=True)
            except OSError:
                pass  # no cache folder: the next writer makes the template again

    def write(self, folder: Path, weights: Any, model: Any, run_id: str) -> None:
        """A model's files into folder; weights are SavedWeights (the file's bytes) or a state dict."""
        import datetime
        import json

        from tinytrain.tracking.model_files import weights_file_bytes

        for relative, content in self.files.items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        data = weights_file_bytes(weights)
        (folder / MODEL_DATA).write_bytes(data)
        values = {
            "artifact_path": model.artifact_location,
            "model_uuid": model.model_id,
            "model_id": model.model_id,
            "run_id": run_id,
            "utc_time_created": str(datetime.datetime.now(datetime.UTC).replace(tzinfo=None)),
        }
        values["model_size_bytes"] = sum(len(content) for content in self.files.values()) + len(data)
        text = self.mlmodel
        for name, value in values.items():
            text = text.replace(f"tinytrain-field-{name}", json.dumps(value))  # a JSON string is a YAML string
        (folder / MLMODEL).write_text(text)
