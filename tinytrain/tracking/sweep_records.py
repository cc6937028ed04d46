"""Reading the store back: the read models that reports take (plain values) and the readers that fill them.

A sweep skips the cells that earlier sweeps finished, so its runs are not just the children of its parent
run. Its cells come from the experiment file the parent keeps; the run of each cell is the finished run
with the cell's run key, whichever sweep made it.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from tinytrain.results import DIVERGED
from tinytrain.spec import Experiment
from tinytrain.tracking.artifacts import local_artifact_file
from tinytrain.tracking.contract import (
    EXPERIMENT_FILE,
    FINISHED_OUTCOMES,
    KIND,
    LOSS,
    OUTCOME,
    PARENT,
    RUN_KEY,
    STOPPED,
    TrackingError,
)
from tinytrain.tracking.legacy import recorded_experiment
from tinytrain.tracking.location import (
    check_store,
    http_status_line,
    is_http,
    rest_request,
    server_failure,
    sqlite_path,
    unreachable_line,
)
from tinytrain.tracking.sqlite import (
    curves_of_runs_readonly,
    experiment_id_readonly,
    experiments_readonly,
    finished_runs_readonly,
    histories_of_runs_readonly,
    latest_run_with_tag_readonly,
    latest_sweep_readonly,
    one_connection,
    params_of_runs_readonly,
    query_sqlite,
    run_readonly,
    runs_with_tag_readonly,
    store_is_new,
)
from tinytrain.tracking.store import Store


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
          AND outcome_tag.value IN (?, ?, ?, ?)
        ORDER BY runs.start_time"""
    return dict(query_sqlite(uri, query, (RUN_KEY, OUTCOME, experiment_name, *FINISHED_OUTCOMES)))


def _finished_keys_rest(uri: str, experiment_name: str) -> dict[str, str]:
    import json
    from urllib.parse import quote

    def call(path: str, body: dict | None = None) -> dict | None:
        """The answer as JSON; None for 404 (no such experiment); any other failure as one line."""
        try:
            with urllib.request.urlopen(rest_request(uri, path, body), timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise TrackingError(http_status_line(uri, error.code)) from None
        except (urllib.error.URLError, OSError) as error:
            line = server_failure(error, uri) or unreachable_line(f"the tracking server at {uri}", str(error))
            raise TrackingError(line) from None

    found = call(f"experiments/get-by-name?experiment_name={quote(experiment_name)}")
    if found is None:
        return {}
    experiment = found["experiment"]
    finished, token = {}, None
    while True:
        body = {
            "experiment_ids": [experiment["experiment_id"]],
            "max_results": 1000,
            "filter": "attributes.status = 'FINISHED'",
            "order_by": ["attributes.start_time ASC"],
        }
        if token:
            body["page_token"] = token
        page = call("runs/search", body) or {}
        for run in page.get("runs", []):
            tags = {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}
            if tags.get(OUTCOME) in FINISHED_OUTCOMES and RUN_KEY in tags:
                finished[tags[RUN_KEY]] = run["info"]["run_id"]
        token = page.get("next_page_token")
        if not token:
            return finished


@dataclass(frozen=True)
class MadeBy:
    """The sweeps whose runs a set of finished runs are: parent run ids, the one with the most runs first."""

    experiment_id: str
    parents: list[str]
    with_views: frozenset[str] = frozenset()  # the parents that have prepared views (sweeps logged before: none)


def sweeps_of_runs(uri: str, experiment_name: str, run_ids: list[str]) -> MadeBy:
    """Which sweeps (parent runs) made these runs of an experiment: a sweep that finds every cell done reads
    it, to print the links of the sweeps that made them. Plain SQL on a SQLite store (nothing written, MLflow
    not imported; held equal to sweeps_of_runs_mlflow by a test), MLflow's client on a server."""
    if is_http(uri):
        return sweeps_of_runs_mlflow(uri, experiment_name, run_ids)
    experiment_id = experiment_id_readonly(uri, experiment_name) or ""
    made: dict[str, int] = {}
    for start in range(0, len(run_ids), 500):  # SQLite takes up to 999 parameters
        chunk = run_ids[start : start + 500]
        rows = query_sqlite(
            uri,
            f"""SELECT tags.value FROM tags JOIN runs ON runs.run_uuid = tags.run_uuid
                WHERE tags.key = ? AND runs.lifecycle_stage = 'active' AND runs.experiment_id = ?
                  AND tags.run_uuid IN ({", ".join("?" * len(chunk))})""",
            (PARENT, experiment_id, *chunk),
        )
        for (parent,) in rows:
            made[parent] = made.get(parent, 0) + 1
    tags = query_sqlite(uri, "SELECT key FROM experiment_tags WHERE experiment_id = ?", (experiment_id,))
    return _made_by(experiment_id, made, {key for (key,) in tags})


def sweeps_of_runs_mlflow(uri: str, experiment_name: str, run_ids: list[str]) -> MadeBy:
    """sweeps_of_runs through MLflow's search."""
    wanted = set(run_ids)
    with Store(uri) as store:
        experiment_id = store.experiment_id(experiment_name, create=False) or ""
        made: dict[str, int] = {}
        for run in store.search(experiment_id, f"tags.`{KIND}` = 'run'") if experiment_id else []:
            parent = run.data.tags.get(PARENT)
            if run.info.run_id in wanted and parent:
                made[parent] = made.get(parent, 0) + 1
        tags = set(store.client.get_experiment(experiment_id).tags) if experiment_id else set()
    return _made_by(experiment_id, made, tags)


def _made_by(experiment_id: str, made: dict[str, int], experiment_tags: set[str]) -> MadeBy:
    from tinytrain.tracking.views import CHARTS, view_tag

    parents = sorted(made, key=lambda parent: (-made[parent], parent))
    viewed = frozenset(parent for parent in parents if view_tag(parent, CHARTS) in experiment_tags)
    return MadeBy(experiment_id, parents, viewed)


@dataclass(frozen=True)
class LatestSweep:
    """An experiment of a store, its latest sweep (parent run id, or None) and whether it has prepared views."""

    experiment_id: str
    name: str
    parent_run_id: str | None
    has_views: bool


def latest_sweeps(uri: str) -> list[LatestSweep]:
    """Each active experiment that holds runs, with its latest sweep, through MLflow's client (for `tinytrain ui`,
    which starts MLflow's server next anyway)."""
    from tinytrain.tracking.views import CHARTS, view_tag

    latest = []
    with Store(uri) as store:
        for experiment in store.client.search_experiments():
            runs = store.client.search_runs([experiment.experiment_id], max_results=1)
            if not runs:
                continue
            sweeps = store.client.search_runs(
                [experiment.experiment_id], f"tags.`{KIND}` = 'sweep'", max_results=1, order_by=["start_time DESC"]
            )
            parent = sweeps[0].info.run_id if sweeps else None
            views = parent is not None and view_tag(parent, CHARTS) in experiment.tags
            latest.append(LatestSweep(experiment.experiment_id, experiment.name, parent, views))
    return sorted(latest, key=lambda sweep: int(sweep.experiment_id) if sweep.experiment_id.isdigit() else 0)


def read_losses(uri: str, run_id: str) -> list[float]:
    with Store(uri) as store:
        return store.losses(run_id)


def read_sweep_experiment(uri: str, parent_run_id: str) -> str:
    """The resolved experiment file that a sweep's parent run keeps."""
    with Store(uri) as store:
        return store.read_text(parent_run_id, EXPERIMENT_FILE)


# The parameters of sqlite.py's finished-runs queries: the tags they join and the outcomes that count as finished
FINISHED_RUNS_SQL = {
    "key_tag": RUN_KEY,
    "outcome_tag": OUTCOME,
    **dict(zip(("finished", "diverged", "converged", "stopped"), FINISHED_OUTCOMES, strict=True)),
}
CURVES = ("test_accuracy",)  # histories besides the loss that reports plot


@dataclass(frozen=True)
class CellRun:
    """The finished run of one cell of a sweep, in plain values: what compare and plot need."""

    run_id: str
    key: str
    optimizer: str
    lr: float
    seed: int
    outcome: str  # finished, diverged or stopped (converged: finished, in a store written before diverge_above)
    initial_loss: float
    final_loss: float
    losses: tuple[float, ...] = ()  # `loss` at steps 0..steps (shorter if it diverged); read on request
    metrics: dict[str, float] = field(default_factory=dict)  # the run's metrics, each at its last step
    curves: dict[str, tuple[tuple[int, float], ...]] = field(default_factory=dict)  # CURVES: (step, value)
    arm: tuple[tuple[str, Any], ...] = ()  # the run's value of each of the grid's other axes (schedule, ...)
    params: dict[str, str] = field(default_factory=dict)  # the run's params as logged (strings), in name order

    @property
    def diverged(self) -> bool:
        return self.outcome == DIVERGED

    @property
    def cell(self) -> tuple:
        """(optimizer, lr, *arm): what compare groups seeds by."""
        return (self.optimizer, self.lr, *self.arm)

    @property
    def arm_name(self) -> str:
        """The optimizer with its arm's axes, e.g. adam [schedule=cosine, weight_decay=0.01]."""
        return arm_name(self.optimizer, self.arm)

    @property
    def stopped(self) -> bool:
        """Stopped early by a budget (successive halving): its losses end at the rung it reached."""
        return self.outcome == STOPPED


def arm_name(optimizer: str, arm: tuple[tuple[str, Any], ...]) -> str:
    return optimizer + (" [" + ", ".join(f"{axis}={value}" for axis, value in arm) + "]" if arm else "")


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
    confirms: str | None = None  # a confirmation sweep: the parent run id of the tuning sweep it confirms
    # Runs a budget stopped early (successive halving): kept apart, since their losses end at the rung they
    # reached and compare's statistics are of runs trained to the end
    stopped: tuple[CellRun, ...] = ()


def read_sweep(
    uri: str,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    with_losses: bool = False,
    with_params: bool = True,
) -> SweepRecord:
    """A sweep of the store: the given parent run, else the latest sweep of the experiment.

    Without an experiment nor a parent run: the store's latest sweep, of whichever experiment.
    A SQLite store is read with plain SQL in a few queries (sqlite.py), without importing MLflow; a server
    through MLflow's client. with_params=False leaves the runs' params out of a SQLite store's record (compare and
    plot read none; on a server they come with the runs anyway).
    """
    if is_http(uri):
        check_store(uri)  # one line now, rather than MLflow's retries and a traceback
        with Store(uri) as store:
            if parent_run_id is None:
                parent_run_id = _latest_sweep(store, experiment)
            record = sweep_record(store, parent_run_id, with_losses=with_losses)
    else:
        if store_is_new(uri):  # opening it would create an empty store
            raise TrackingError(
                f"no store at {sqlite_path(uri)}: run `tinytrain sweep` first, or give the store with --tracking-uri"
            )
        with one_connection(uri):
            if parent_run_id is None:
                parent_run_id = _latest_sweep_sqlite(uri, experiment)
            record = sweep_record_sqlite(uri, parent_run_id, with_losses=with_losses, with_params=with_params)
    if experiment is not None and record.experiment != experiment:
        raise TrackingError(
            f"run {parent_run_id} is a sweep of experiment '{record.experiment}', not "
            f"'{experiment}': drop --experiment or give a sweep of '{experiment}'"
        )
    return record


def _latest_sweep_sqlite(uri: str, name: str | None) -> str:
    if name is None:
        latest = latest_sweep_readonly(uri, KIND)
        if latest is None:
            raise TrackingError(f"no sweep in {uri} yet: run `tinytrain sweep` first, or check --tracking-uri")
        return latest
    experiment_id = experiment_id_readonly(uri, name)
    if experiment_id is None:
        raise TrackingError(
            f"no experiment '{name}' in {uri}: run `tinytrain sweep` first, or check --experiment and --tracking-uri"
        )
    latest = latest_run_with_tag_readonly(uri, experiment_id, KIND, "sweep")
    if latest is None:
        raise TrackingError(f"experiment '{name}' has no sweep yet: run `tinytrain sweep` first")
    return latest


def _latest_sweep(store: Store, name: str | None) -> str:
    """The parent run id of the experiment's latest sweep (no name: the store's latest sweep)."""
    if name is None:
        ids = [experiment.experiment_id for experiment in store.client.search_experiments()]
        latest = store.client.search_runs(
            ids, f"tags.`{KIND}` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1
        )
        if not latest:
            raise TrackingError(f"no sweep in {store.uri} yet: run `tinytrain sweep` first, or check --tracking-uri")
        return latest[0].info.run_id
    experiment_id = store.experiment_id(name, create=False)
    if experiment_id is None:
        raise TrackingError(
            f"no experiment '{name}' in {store.uri}: run `tinytrain sweep` first, or check "
            "--experiment and --tracking-uri"
        )
    latest = store.client.search_runs(
        [experiment_id], f"tags.`{KIND}` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1
    )
    if not latest:
        raise TrackingError(f"experiment '{name}' has no sweep yet: run `tinytrain sweep` first")
    return latest[0].info.run_id


def sweep_record(
    store: Store,
    parent_run_id: str,
    experiment: Experiment | None = None,
    with_losses: bool = False,
    known_losses: dict[str, tuple[float, ...]] | None = None,
) -> SweepRecord:
    """Resolve a sweep's cells to their finished runs (experiment: the sweep's own, if already loaded).

    known_losses (run key -> losses as stored) spares reading back the histories a Recorder just wrote.
    """
    known_losses = known_losses or {}
    parent = store.get_run(parent_run_id)
    if parent.data.tags.get(KIND) != "sweep":
        raise _not_a_sweep(parent_run_id)
    if experiment is None:
        text = store.read_text(parent_run_id, EXPERIMENT_FILE)
        experiment = recorded_experiment(text, f"run {parent_run_id}")
    experiment_id = parent.info.experiment_id
    finished = store.finished_runs_by_key(experiment_id)
    runs, missing = [], []
    for spec in experiment.specs():
        run = finished.get(spec.key)
        if run is None:
            missing.append(spec.run_name)
            continue
        metrics = run.data.metrics
        runs.append(
            CellRun(
                run_id=run.info.run_id,
                key=spec.key,
                optimizer=spec.optimizer,
                lr=spec.lr,
                seed=spec.seed,
                arm=experiment.arm(spec),
                outcome=run.data.tags[OUTCOME],
                initial_loss=metrics.get("initial_loss", math.nan),
                final_loss=metrics.get("final_loss", math.nan),
                losses=(known_losses.get(spec.key) or tuple(store.losses(run.info.run_id))) if with_losses else (),
                metrics=dict(metrics),
                curves={
                    name: tuple(store.history(run.info.run_id, name))
                    for name in CURVES
                    if with_losses and name in metrics
                },
                params=dict(sorted(run.data.params.items())),
            )
        )
    return _record(experiment, experiment_id, parent_run_id, runs, missing)


def _not_a_sweep(parent_run_id: str) -> TrackingError:
    return TrackingError(
        f"run {parent_run_id} is not a sweep's parent run (tag {KIND}=sweep): give the "
        "id of a sweep, or leave --sweep out for the latest one"
    )


def sweep_record_sqlite(
    uri: str,
    parent_run_id: str,
    experiment: Experiment | None = None,
    with_losses: bool = False,
    known_losses: dict[str, tuple[float, ...]] | None = None,
    with_params: bool = True,
) -> SweepRecord:
    """sweep_record on a SQLite store, in plain SQL: the finished runs, their latest metrics and (with_losses)
    every `loss` history in one query each, instead of MLflow's search and a get_metric_history per run
    (with_params=False: the runs' params left out)."""
    known_losses = known_losses or {}
    parent = run_readonly(uri, parent_run_id)
    if parent is None:
        raise TrackingError(
            f"no run '{parent_run_id}' in {uri}: check the id (the UI or `tinytrain compare` "
            "shows them) and --tracking-uri"
        )
    experiment_id, artifact_uri, tags = parent
    if tags.get(KIND) != "sweep":
        raise _not_a_sweep(parent_run_id)
    if experiment is None:
        local = local_artifact_file(uri, artifact_uri, EXPERIMENT_FILE)  # None: artifacts elsewhere
        text = local.read_text() if local is not None and local.is_file() else read_sweep_experiment(uri, parent_run_id)
        experiment = recorded_experiment(text, f"run {parent_run_id}")
    finished = finished_runs_readonly(uri, experiment_id, FINISHED_RUNS_SQL)
    specs = experiment.specs()
    run_ids = [finished[spec.key][0] for spec in specs if spec.key in finished]  # the sweep's runs, grid order
    params = params_of_runs_readonly(uri, run_ids) if with_params else {}
    losses: dict[str, list[tuple[int, float]]] = {}
    if with_losses and any(spec.key in finished and spec.key not in known_losses for spec in specs):
        unknown = [finished[spec.key][0] for spec in specs if spec.key in finished and spec.key not in known_losses]
        losses = histories_of_runs_readonly(uri, unknown, LOSS)
    curves = {}
    if with_losses:
        curves = {
            name: histories_of_runs_readonly(uri, run_ids, name)
            for name in CURVES
            if any(name in metrics for _run_id, _outcome, metrics in finished.values())
        }
    runs, missing = [], []
    for spec in specs:
        found = finished.get(spec.key)
        if found is None:
            missing.append(spec.run_name)
            continue
        run_id, outcome, metrics = found
        runs.append(
            CellRun(
                run_id=run_id,
                key=spec.key,
                optimizer=spec.optimizer,
                lr=spec.lr,
                seed=spec.seed,
                arm=experiment.arm(spec),
                outcome=outcome,
                initial_loss=metrics.get("initial_loss", math.nan),
                final_loss=metrics.get("final_loss", math.nan),
                losses=(known_losses.get(spec.key) or tuple(value for _step, value in losses.get(run_id, ())))
                if with_losses
                else (),
                metrics=dict(metrics),
                curves={name: tuple(history.get(run_id, ())) for name, history in curves.items() if name in metrics},
                params=params.get(run_id, {}),
            )
        )
    return _record(experiment, experiment_id, parent_run_id, runs, missing)


# ---------------------------------------------------------------------------------------------------------
# The readers of the Python API: a sweep's curves as long rows, and the sweeps of a store. On a SQLite store
# in plain SQL (one query a metric); on a server through MLflow's client. Tests hold both routes equal.

CurveRow = tuple[str, int, str, float]  # (run id, step, metric, value)


def read_curves(uri: str, sweep: SweepRecord, metrics: tuple[str, ...] = (LOSS,)) -> list[CurveRow]:
    """(run id, step, metric, value) of the metrics' histories of the sweep's runs, in the sweep's run order,
    then metric, then step."""
    if is_http(uri):
        with Store(uri) as store:
            return curves_mlflow(store, sweep, metrics)
    return curves_sqlite(uri, sweep, metrics)


def curves_sqlite(uri: str, sweep: SweepRecord, metrics: tuple[str, ...]) -> list[CurveRow]:
    return curves_of_runs_readonly(uri, [run.run_id for run in sweep.runs], list(metrics))


def curves_mlflow(store: Store, sweep: SweepRecord, metrics: tuple[str, ...]) -> list[CurveRow]:
    """MLflow's own route: one get_metric_history per run and metric."""
    return [
        (run.run_id, step, metric, value)
        for run in sweep.runs
        for metric in metrics
        for step, value in store.history(run.run_id, metric)
    ]


SweepRow = tuple[str, str, str, str, str, int, int | None]  # id, run name, experiment id and name, status, start, end


def read_sweeps(uri: str, experiment: str | None = None) -> list[SweepRow]:
    """The sweeps (parent runs) of the store, or of one experiment, the latest first."""
    if is_http(uri):
        check_store(uri)
        with Store(uri) as store:
            return sweeps_mlflow(store, experiment)
    if store_is_new(uri):
        return []
    return runs_with_tag_readonly(uri, KIND, "sweep", experiment)


def sweeps_mlflow(store: Store, experiment: str | None = None) -> list[SweepRow]:
    """MLflow's own route: search_runs over the active experiments."""
    from mlflow.entities import ViewType

    experiments = store.client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    names = {item.experiment_id: item.name for item in experiments if experiment in (None, item.name)}
    if not names:
        return []
    runs, token = [], None
    while True:
        page = store.client.search_runs(
            list(names), f"tags.`{KIND}` = 'sweep'", max_results=1000, page_token=token, order_by=["start_time DESC"]
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    runs.sort(key=lambda run: (-run.info.start_time, run.info.run_id))
    return [
        (
            run.info.run_id,
            run.info.run_name,
            run.info.experiment_id,
            names[run.info.experiment_id],
            run.info.status,
            run.info.start_time,
            run.info.end_time,
        )
        for run in runs
    ]


def read_experiments(uri: str) -> list[tuple[str, str]]:
    """(experiment id, name) of the active experiments that hold runs."""
    if not is_http(uri):
        return experiments_readonly(uri)
    check_store(uri)
    with Store(uri) as store:
        return experiments_mlflow(store)


def experiments_mlflow(store: Store) -> list[tuple[str, str]]:
    from mlflow.entities import ViewType

    experiments = store.client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    held = [item for item in experiments if store.client.search_runs([item.experiment_id], max_results=1)]
    return sorted(((item.experiment_id, item.name) for item in held), key=lambda pair: int(pair[0]))


def _record(
    experiment: Experiment, experiment_id: str, parent_run_id: str, runs: list[CellRun], missing: list
) -> SweepRecord:
    """The sweep's record from its cells' runs, whichever route read them: the runs a budget stopped apart."""
    return SweepRecord(
        experiment.name,
        experiment_id,
        parent_run_id,
        experiment.settings["steps"],
        len(runs) + len(missing),
        tuple(run for run in runs if not run.stopped),
        tuple(missing),
        experiment.confirms,
        tuple(run for run in runs if run.stopped),
    )
