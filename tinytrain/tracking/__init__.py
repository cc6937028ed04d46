"""Everything tinytrain keeps in MLflow: where the store is, how runs are written, and how they read back.

    contract.py        the names of the data contract (tags, artifacts) and TrackingError
    mlflow_private.py  the only uses of MLflow's private APIs, each with why
    location.py        tracking URIs, the store check, the UI's runs page, the `mlflow server` command
    sqlite.py          SQLite beside MLflow: connection tuning, the store template, WAL checkpoint, plain reads
    provenance.py      the environment of a run and the process that writes it
    artifacts.py       artifacts written in place on a local store; server artifacts on a SQLite store
    model_files.py     the files of a checkpoint's LoggedModel: its weights' bytes, the LeNet's Unpickler
    weights_pickle.py  the pickle module (by that name) through which MLflow loads a checkpoint as the LeNet
    store.py           Store: every write, through MLflow's client
    legacy.py          what stores written by earlier versions hold, read in one place
    sweep_records.py   reads sweeps: their read models (SweepRecord, CellRun), runs, curves, the sweeps of a store
    logged_runs.py     reads one run's whole record (LoggedRun), weights included, weights-only, for reproduce
    recorder.py        Recorder: the single writing path of a sweep (SweepRecorder, SummaryMaker)
    background.py      BackgroundRecorder: a Recorder in a writer process of its own
    writers.py         RunWriters: more writer processes beside it, for finished runs (the writers setting)

The names of the data contract are imported from contract.py itself. Nothing here imports MLflow at module
level (only where a store is opened), nor the reports, the sweep or the executors: the arrows point into
tracking, never out of it (checked by `make lint`).
"""

from tinytrain.tracking.contract import TrackingError
from tinytrain.tracking.location import (
    artifact_root,
    check_store,
    is_http,
    resolve_tracking_uri,
    runs_page_url,
    server_command,
    sqlite_path,
    sweep_search,
)
from tinytrain.tracking.logged_runs import LoggedRun, read_logged_run
from tinytrain.tracking.recorder import CellSummaryRun, Recorder, SummaryMaker, SweepCounts, SweepRecorder
from tinytrain.tracking.sqlite import create_store_from_template, experiments_readonly, template_cache
from tinytrain.tracking.store import Store
from tinytrain.tracking.sweep_records import (
    CellRun,
    LatestSweep,
    MadeBy,
    SweepRecord,
    finished_keys_readonly,
    latest_sweeps,
    read_losses,
    read_sweep,
    read_sweep_experiment,
    sweep_record,
    sweeps_of_runs,
)

__all__ = [
    "CellRun",
    "CellSummaryRun",
    "LatestSweep",
    "LoggedRun",
    "MadeBy",
    "Recorder",
    "Store",
    "SweepCounts",
    "SweepRecord",
    "SweepRecorder",
    "SummaryMaker",
    "TrackingError",
    "artifact_root",
    "check_store",
    "create_store_from_template",
    "experiments_readonly",
    "finished_keys_readonly",
    "is_http",
    "latest_sweeps",
    "read_logged_run",
    "read_losses",
    "read_sweep",
    "read_sweep_experiment",
    "resolve_tracking_uri",
    "runs_page_url",
    "server_command",
    "sqlite_path",
    "sweep_record",
    "sweep_search",
    "sweeps_of_runs",
    "template_cache",
]
