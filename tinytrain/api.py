"""tinytrain's public Python API: stores, sweeps, runs and curves as pandas DataFrames, compare, and sweeps run
from Python. `import tinytrain` gives it; the command line stands on it and on nothing else of the library.

    import tinytrain

    store = tinytrain.open_store()                       # mlruns/mlflow.db, or a path, or http://HOST:PORT
    sweep = store.sweep("optimizer-grid")                # the experiment's latest sweep
    runs = sweep.runs()                                  # one row a run: ids, run key, outcome, params, metrics
    curves = sweep.curves()                              # long: run_id, step, metric, value
    table = sweep.compare()                              # the numbers `tinytrain compare --format json` prints

    experiment = tinytrain.load_experiment(overrides={"steps": 10, "optimizer": ["adam", "sgd"]})
    outcome = store.run_sweep(experiment)

Only light modules are imported here; torch, MLflow, pandas, scipy and matplotlib load when a call needs them,
so `import tinytrain` and `tinytrain --help` stay instant. On a SQLite store, reads take a plain-SQL path
(tracking/sqlite.py) that tests hold equal to MLflow's own search_runs and get_metric_history; on a server,
reads go through MLflow's client.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinytrain.errors import ConfigError
from tinytrain.executors.base import EXECUTORS, ExecutorError
from tinytrain.executors.cluster import CLUSTER_FOLDER
from tinytrain.optimizers import ADAMW_WITH_MUON, MUON_PARAMETERS, OPTIMIZERS
from tinytrain.plugins import OPTIMIZER_GROUP, PROBLEM_GROUP
from tinytrain.reports.compare import COLUMNS as COMPARE_COLUMNS
from tinytrain.reports.compare import FORMATS, RANKINGS
from tinytrain.reports.compare import METRICS as COMPARE_METRICS
from tinytrain.reports.stats import ALPHA as COMPARE_ALPHA
from tinytrain.reports.stats import TARGET as COMPARE_TARGET
from tinytrain.results import DIVERGED, FAILED, FINISHED
from tinytrain.spec import DEFAULTS, ENGINES, Experiment, RunSpec
from tinytrain.spec import load_experiment as _load_experiment
from tinytrain.spec.catalogue import DIGITS_TRAINING_IMAGES, LOSSES, PROBLEMS
from tinytrain.spec.settings import BUDGETS
from tinytrain.tracking.contract import LOSS, TrackingError
from tinytrain.tracking.location import is_http, resolve_tracking_uri

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from tinytrain.budget import Halving
    from tinytrain.executors.cluster import ClusterState
    from tinytrain.gradcheck import TensorCheck
    from tinytrain.reports.compare import CellSummary
    from tinytrain.reproduce import Verdict
    from tinytrain.search import Dimension, SearchOutcome
    from tinytrain.sweep import CellStatus, Separation, SweepOutcome
    from tinytrain.tracking.sweep_records import LatestSweep, SweepRecord
    from tinytrain.tracking.views import SweepLinks

__all__ = [
    # stores, sweeps, runs and curves
    "MLflowStore",
    "Sweep",
    "open_store",
    "store_uri",
    # experiments and sweeps run from Python
    "Experiment",
    "RunSpec",
    "load_experiment",
    "run_sweep",
    "sweep_until_separated",
    "sweep_halving",
    "halving_lines",
    "search_space",
    "run_search",
    "without_lr_axis",
    # trust and services
    "check_gradients",
    "start_cluster",
    "stop_cluster",
    "ui_address",
    "ui_command",
    "sweep_links",
    "entry_points",
    # errors
    "ConfigError",
    "ExecutorError",
    "TrackingError",
    # the catalogue and the choices of the command line's options
    "ADAMW_WITH_MUON",
    "BUDGETS",
    "CLUSTER_FOLDER",
    "COMPARE_ALPHA",
    "COMPARE_COLUMNS",
    "COMPARE_METRICS",
    "COMPARE_TARGET",
    "DEFAULTS",
    "DIGITS_TRAINING_IMAGES",
    "ENGINES",
    "EXECUTORS",
    "FORMATS",
    "LOSSES",
    "MUON_PARAMETERS",
    "OPTIMIZER_GROUP",
    "PROBLEM_GROUP",
    "OPTIMIZERS",
    "PROBLEMS",
    "RANKINGS",
    # the outcomes of a run
    "DIVERGED",
    "FAILED",
    "FINISHED",
    "check_compare_options",
    "check_figure_format",
    "is_http",
    "PLOT_KINDS",
    # the links of the MLflow UI, and plugins
    "latest_sweeps",
    "exposure_warning",
    "server_failure",
    "database_server_commands",
    # the verdict: records of a sweep, a confirmation sweep (the report modules load on first use)
    "read_sweep",
    "confirm",
]


# ---------------------------------------------------------------------------------------------------------
# Experiments


def load_experiment(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | Iterable[str] = (),
    *,
    text: str | None = None,
    allow_huge: bool = False,
) -> Experiment:
    """Read and validate an experiment file, with overrides applied.

    Args:
        path: A TOML experiment file; default experiments/optimizer-grid.toml.
        overrides: Settings and grid axes to change: a mapping such as `{"steps": 10, "lr": [0.1, 0.01]}`
            (a list is a grid axis's values), or the command line's `--set` strings (`"lr=0.1,0.01"`).
        text: The file's text instead of a path (path then only names it in messages).
        allow_huge: Accept a grid of more than a million cells (refused otherwise, before anything is drawn).

    Returns:
        The validated experiment: `experiment.specs()` lists its runs.

    Raises:
        ConfigError: The file or an override is not a valid experiment (one line that says how to fix it).

    Example:
        >>> experiment = load_experiment(overrides={"steps": 10, "optimizer": ["adam", "sgd"], "seed": [0, 1]})
        >>> len(experiment.specs())  # 2 optimizers x 5 learning rates x 2 seeds
        20
    """
    texts = [_override_text(key, value) for key, value in overrides.items()] if isinstance(overrides, Mapping) else []
    if not isinstance(overrides, Mapping):
        texts = list(overrides)
    return _load_experiment(path, texts, text=text, allow_huge=allow_huge)


def _override_text(key: str, value: Any) -> str:
    """{"lr": [0.1, 0.01]} -> "lr=0.1,0.01": a mapping's item as the `--set` text it means."""
    from tinytrain.spec.experiment import _toml_value

    if isinstance(value, Mapping):  # a draw, e.g. {"log_uniform": [1e-4, 1e-1], "count": 8, "seed": 0}
        inline = ", ".join(f"{name} = {_toml_value(item)}" for name, item in value.items())
        return f"{key}={{{inline}}}"
    if isinstance(value, list | tuple):
        if not value:
            raise ConfigError(f"override {key} is empty: give at least one value")
        return f"{key}=" + ",".join(_toml_value(item) for item in value)
    return f"{key}={_toml_value(value)}"


def without_lr_axis(experiment: Experiment) -> Experiment:
    """The experiment with no lr axis: each optimizer trains at its own default learning rate."""
    return replace(experiment, grid={axis: values for axis, values in experiment.grid.items() if axis != "lr"})


# ---------------------------------------------------------------------------------------------------------
# Stores


def store_uri(uri: str | Path | None = None) -> str:
    """The tracking URI that tinytrain uses for `uri`.

    Args:
        uri: A SQLite file (a path or `sqlite:///...`) or a server (`http://HOST:PORT`); default
            `$MLFLOW_TRACKING_URI`, else mlruns/mlflow.db in the current folder.

    Returns:
        An absolute `sqlite:///` URI, or the server's URI.
    """
    return resolve_tracking_uri(str(uri) if uri is not None else None)


def open_store(uri: str | Path | None = None) -> MLflowStore:
    """Open an MLflow store to read sweeps from and run sweeps into.

    Args:
        uri: A SQLite file (a path or `sqlite:///...`) or a server (`http://HOST:PORT`); default
            `$MLFLOW_TRACKING_URI`, else mlruns/mlflow.db in the current folder. Nothing is created until a
            sweep runs.

    Returns:
        The store.
    """
    return MLflowStore(store_uri(uri))


@dataclass(frozen=True)
class MLflowStore:
    """An MLflow store (a SQLite file or a server) as tinytrain reads and writes it.

    Attributes:
        uri: The resolved tracking URI.
    """

    uri: str

    def experiments(self) -> pd.DataFrame:
        """The experiments that hold runs.

        Returns:
            One row an experiment: `experiment_id`, `name`.
        """
        import pandas as pd

        from tinytrain.tracking.sweep_records import read_experiments

        return pd.DataFrame(read_experiments(self.uri), columns=["experiment_id", "name"])

    def sweeps(self, experiment: str | None = None) -> pd.DataFrame:
        """The sweeps of the store (or of one experiment), the latest first.

        Args:
            experiment: An experiment's name; default every experiment.

        Returns:
            One row a sweep: `sweep_id` (its parent run's id), `run_name`, `experiment_id`, `experiment`,
            `status` (MLflow's: FINISHED, RUNNING, KILLED, FAILED), `start_time` and `end_time` (UTC).
        """
        import pandas as pd

        from tinytrain.tracking.sweep_records import read_sweeps

        columns = ["sweep_id", "run_name", "experiment_id", "experiment", "status", "start_time", "end_time"]
        frame = pd.DataFrame(read_sweeps(self.uri, experiment), columns=columns)
        for column in ("start_time", "end_time"):
            frame[column] = pd.to_datetime(frame[column], unit="ms", utc=True)
        return frame

    def sweep(
        self,
        experiment: str | None = None,
        sweep_id: str | None = None,
        *,
        with_curves: bool = False,
        with_params: bool = True,
    ) -> Sweep:
        """A sweep of the store: the given one, else the experiment's latest.

        Its runs are the finished run of each cell of its grid, whichever sweep trained it (a sweep skips the
        cells an earlier one finished).

        Args:
            experiment: The experiment's name; default optimizer-grid, or the experiment of `sweep_id`.
            sweep_id: A sweep's parent run id; default the experiment's latest sweep.
            with_curves: Read every loss curve now (compare and plot need them); otherwise they are read on
                first use.
            with_params: Read every run's params (the `params.*` columns of `runs()`); compare and plot need
                none.

        Returns:
            The sweep.

        Raises:
            TrackingError: No such store, experiment or sweep (one line that says what to do).
        """
        from tinytrain.tracking.sweep_records import read_sweep

        record = read_sweep(self.uri, experiment, sweep_id, with_losses=with_curves, with_params=with_params)
        return Sweep(self.uri, record, record if with_curves else None)

    def run_sweep(self, experiment: Experiment, **options: Any) -> SweepOutcome:
        """Train every cell of the experiment that the store has not finished, and log it: see `run_sweep`."""
        return run_sweep(experiment, self, **options)

    def plan(self, experiment: Experiment) -> list[CellStatus]:
        """Each cell of the experiment and the run that already finished it, if any; writes nothing."""
        from tinytrain.sweep import plan

        return plan(experiment, self.uri)

    def sweep_experiment(self, sweep_id: str, overrides: Mapping[str, Any] | Iterable[str] = ()) -> Experiment:
        """The resolved experiment a sweep's parent run keeps (to run it again), with overrides applied."""
        from tinytrain.tracking.legacy import recorded_experiment
        from tinytrain.tracking.sweep_records import read_sweep_experiment

        text = read_sweep_experiment(self.uri, sweep_id)
        texts = [_override_text(k, v) for k, v in overrides.items()] if isinstance(overrides, Mapping) else overrides
        return recorded_experiment(text, f"run {sweep_id}", list(texts))

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """A run's metrics, each at its last step."""
        from tinytrain.tracking.store import Store

        with Store(self.uri) as store:
            return dict(store.get_run(run_id).data.metrics)

    def losses(self, run_id: str) -> list[float]:
        """A run's logged `loss`, in step order (loss[i] before step i's update)."""
        from tinytrain.tracking.sweep_records import read_losses

        return read_losses(self.uri, run_id)

    def reproduce(self, run_id: str) -> Verdict:
        """Retrain a logged run from its record alone and compare every metric and checkpoint, bit for bit.

        Returns:
            The verdict: `identical`, `differences`, and `describe()` for one line.
        """
        from tinytrain.reproduce import reproduce
        from tinytrain.tracking.logged_runs import read_logged_run

        return reproduce(read_logged_run(self.uri, run_id))

    def runs_page(self, experiment_id: str, ui_address: str = "http://127.0.0.1:5000") -> str:
        """The MLflow UI's page of an experiment's runs (a server's own address, else `ui_address`)."""
        from tinytrain.tracking.location import runs_page_url

        return runs_page_url(self.uri, experiment_id, ui_address)

    def server_command(
        self, host: str = "127.0.0.1", port: int = 5000, allowed_hosts: str | None = None, basic_auth: bool = False
    ) -> tuple[list[str], dict[str, str]]:
        """The `mlflow server` command (and its environment) that serves this SQLite store and its UI; off loopback
        with the Host headers it accepts (allowed_hosts) and, with basic_auth, MLflow's login."""
        from tinytrain.tracking.location import server_command

        return server_command(self.uri, host, port, allowed_hosts, basic_auth)


@dataclass
class Sweep:
    """A sweep read back from a store: the finished run of each cell of its grid.

    Attributes:
        uri: The store's tracking URI.
        record: What was read (plain values): `experiment`, `experiment_id`, `parent_run_id`, `steps`, `cells`,
            `runs` and `missing` (the cells with no finished run yet).
    """

    uri: str
    record: SweepRecord
    _with_curves: SweepRecord | None = field(default=None, repr=False)

    @property
    def sweep_id(self) -> str:
        """The sweep's parent run id."""
        return self.record.parent_run_id

    @property
    def experiment(self) -> str:
        """The experiment's name."""
        return self.record.experiment

    @property
    def cells(self) -> int:
        """Cells in the sweep's grid (runs() has one row for each that has a finished run)."""
        return self.record.cells

    @property
    def missing(self) -> tuple[str, ...]:
        """Run names of the cells without a finished run (failed, killed or not run yet)."""
        return self.record.missing

    @property
    def stopped(self) -> tuple[str, ...]:
        """Run ids of the runs a budget stopped early (successive halving): not in runs() or compare."""
        return tuple(run.run_id for run in self.record.stopped)

    @property
    def stopped_note(self) -> str | None:
        """The cells a budget stopped early, by the step they reached, in a sentence; None when there are none."""
        from tinytrain.reports.compare import stopped_sentence

        return stopped_sentence(self.record.stopped) if self.record.stopped else None

    def runs(self) -> pd.DataFrame:
        """The sweep's runs, one row each, in grid order (optimizer, then lr, then seed).

        Returns:
            Columns `run_id`, `run_key`, `optimizer`, `lr`, `seed`, `outcome` (finished or diverged), then
            `params.NAME` (as logged: strings) and `metrics.NAME` (each at its last step; NaN where a run
            has none), as MLflow's own `search_runs` names them.
        """
        import pandas as pd

        runs = self.record.runs
        columns: dict[str, list[Any]] = {
            "run_id": [run.run_id for run in runs],
            "run_key": [run.key for run in runs],
            "optimizer": [run.optimizer for run in runs],
            "lr": [run.lr for run in runs],
            "seed": [run.seed for run in runs],
            "outcome": [run.outcome for run in runs],
        }
        for name in sorted({name for run in runs for name in run.params}):
            columns[f"params.{name}"] = [run.params.get(name) for run in runs]
        for name in sorted({name for run in runs for name in run.metrics}):
            columns[f"metrics.{name}"] = [run.metrics.get(name, math.nan) for run in runs]
        return pd.DataFrame(columns)

    def curves(self, metrics: Sequence[str] = (LOSS,)) -> pd.DataFrame:
        """The sweep's curves as one long table.

        Args:
            metrics: The metrics whose every logged step to read: `loss` (default), and where the recipe or
                the problem logs them `lr`, `grad_norm`, `test_accuracy`, ...

        Returns:
            Columns `run_id`, `step`, `metric`, `value`; runs in grid order, then metric, then step. Join it
            with `runs()` on `run_id` for the optimizer, lr and seed.
        """
        import pandas as pd

        from tinytrain.tracking.sweep_records import read_curves

        rows = read_curves(self.uri, self.record, tuple(metrics))
        return pd.DataFrame(rows, columns=["run_id", "step", "metric", "value"])

    def compare_rows(
        self,
        target: float = COMPARE_TARGET,
        by: str | None = None,
        metric: str = "final_loss",
        vs: str | tuple[str, float] | None = None,
        sort: str = "rank",
    ) -> list[CellSummary]:
        """The rows of `compare()` as records (`reports.compare.CellSummary`), as the command line renders them."""
        from tinytrain.reports import compare as report

        if metric not in COMPARE_METRICS:
            raise ConfigError(f"unknown metric {metric!r}: use one of {', '.join(COMPARE_METRICS)}")
        baseline = check_compare_options(target, vs)
        runs = self._curves().runs
        untested = [run for run in runs if not run.diverged and math.isnan(report.metric_value(run, metric))]
        if untested:
            why = (
                "digits holds no validation set out unless validation > 0"
                if metric.startswith("val_")
                else "the one-sample problem has no test set"
            )
            raise ConfigError(
                f"sweep {self.sweep_id} has no {metric} for {len(untested)} of its runs ({why}): "
                "compare --metric final_loss"
            )
        try:
            rows = report.summarize(report.as_metric(runs, metric), target, _ranking(by, metric), baseline)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        try:
            return report.sort_rows(rows, sort)
        except ValueError as error:
            raise ConfigError(f"--sort: {error}") from None

    def compare(
        self,
        target: float = COMPARE_TARGET,
        by: str | None = None,
        metric: str = "final_loss",
        vs: str | tuple[str, float] | None = None,
        sort: str = "rank",
    ) -> pd.DataFrame:
        """The cells compared over their seeds: the numbers `tinytrain compare --format json` prints.

        Args:
            target: Time to target: the first step whose loss is at or below it.
            by: Rank by `"target"` (median steps to target) or `"final_loss"` (geometric mean); default target,
                or final_loss for another metric.
            metric: What the statistics are of: `final_loss`, `test_loss` or `test_accuracy` (as its error).
            vs: The baseline of the paired comparison, `"adam@0.001"` or `("adam", 0.001)`; default the
                best-ranked cell.
            sort: The column the rows are ordered by, ascending.

        Returns:
            One row a (optimizer, lr) cell, with the columns `COMPARE_COLUMNS` (rank, steps_to_target, median,
            ci_low, ci_high, iqm, p_better, p_value (Holm), tied_with_best, ...); an empty value is None.

        Raises:
            ConfigError: A bad option (an unknown metric or column, a baseline that is not a cell).
        """
        import pandas as pd

        from tinytrain.reports.compare import columns_of

        rows = self.compare_rows(target, by, metric, vs, sort)
        columns = columns_of(rows)  # COMPARE_COLUMNS, with the grid's other axes after lr
        records = [{column: row.value(column) for column in columns} for row in rows]
        return pd.DataFrame(records, columns=list(columns), dtype=object)

    def compare_text(
        self,
        output_format: str = "table",
        target: float = COMPARE_TARGET,
        by: str | None = None,
        metric: str = "final_loss",
        vs: str | tuple[str, float] | None = None,
        sort: str = "rank",
        width: int | None = None,
    ) -> str:
        """The compare table as `tinytrain compare` prints it: `table` (fitted to `width` columns when given),
        `markdown`, `latex`, `csv` or `json`."""
        from tinytrain.reports import compare as report

        rows = self.compare_rows(target, by, metric, vs, sort)
        title = report.compare_title(self.record, metric)
        ranking = _ranking(by, metric)
        caption = report.compare_caption(rows, ranking, target, metric)
        return report.render_compare(rows, output_format, title, caption, target, metric, ranking, width)

    def before_after_text(self, output_format: str = "table") -> str:
        """Each run's initial -> final loss, and each cell's mean: the one-step measurement, as text."""
        from tinytrain.reports import compare as report

        rows = report.before_after(self.record.runs)
        return report.render_before_after(rows, output_format, report.before_after_title(self.record))

    def plot(self, out: str | Path | None = None, kind: str = "curves", dpi: float | None = None) -> Figure:
        """A figure of the sweep.

        Args:
            out: A file to write the figure to, in the format its suffix names (png, pdf, svg, ...: any format
                matplotlib writes); its folder is created. Default: none.
            kind: `curves`, the loss curves (a panel per arm, a line per lr: the median over seeds, a band over
                them); `lr`, each arm's tuning metric against lr on log axes; `best-of-k`, each arm's expected
                best after k tuning trials (for a confirmation sweep: of the sweep it confirms).
            dpi: The resolution of a raster format; default matplotlib's.

        Returns:
            The matplotlib figure.
        """
        from tinytrain.reports import plot as curves

        if out is not None:
            check_figure_format(out)
        if not self.record.runs:
            raise TrackingError(f"sweep {self.sweep_id} has no finished run to plot yet")
        if kind == "curves":
            figure = curves.plot_loss_curves(self._curves())
        elif kind in ("lr", "best-of-k"):
            from tinytrain.reports import arm_plots, verdict
            from tinytrain.tracking.sweep_records import read_sweep

            record = self.record
            tuning_sweep = read_sweep(self.uri, parent_run_id=record.confirms) if record.confirms else record
            draw = arm_plots.plot_metric_against_lr if kind == "lr" else arm_plots.plot_expected_best
            figure = draw(verdict.tune(tuning_sweep), tuning_sweep)
        else:
            raise ConfigError(f"unknown kind of plot {kind!r}: use one of {', '.join(PLOT_KINDS)}")
        if out is not None:
            curves.save_figure(figure, out, dpi)
        return figure

    def _curves(self) -> SweepRecord:
        """The record with every run's loss curve (read once)."""
        if self._with_curves is None:
            from tinytrain.tracking.sweep_records import read_sweep

            self._with_curves = read_sweep(self.uri, parent_run_id=self.sweep_id, with_losses=True)
        return self._with_curves


PLOT_KINDS = ("curves", "lr", "best-of-k")


def exposure_warning(host: str, allowed_hosts: str | None, basic_auth: bool) -> str | None:
    """Check a server's --host before it starts (ConfigError off loopback without allowed_hosts); the warning to
    print when nobody has to log in, else None."""
    from tinytrain.tracking.location import exposure_warning as check

    return check(host, allowed_hosts, basic_auth)


def server_failure(error: BaseException, uri: str | None = None) -> str | None:
    """A failure to talk to a tracking server (401, 403, 404, 5xx, refused, a timeout) as one line naming the
    cause and the fix; None for any other error."""
    from tinytrain.tracking.location import server_failure as line

    return line(error, uri)


def database_server_commands(*args: Any, **kwargs: Any) -> tuple[list[str], list[str], dict[str, str]]:
    """`mlflow db upgrade` and `mlflow server` on a database URL, and their environment (see
    `tinytrain.tracking.location.database_server_commands` for the arguments)."""
    from tinytrain.tracking.location import database_server_commands as commands

    return commands(*args, **kwargs)


def latest_sweeps(uri: str) -> list[LatestSweep]:
    """Each experiment of the store that holds runs, with its latest sweep and whether it has prepared UI views."""
    from tinytrain.tracking.sweep_records import latest_sweeps as latest

    return latest(uri)


def check_figure_format(out: str | Path) -> str:
    """The format a figure file's suffix names, if matplotlib writes it (checked before any store is read)."""
    from tinytrain.reports import plot as curves

    try:
        return curves.figure_format(out)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def check_compare_options(target: float, vs: str | tuple[str, float] | None) -> tuple[str, float] | None:
    """Check compare's target and baseline before any store is read; the baseline as (optimizer, lr)."""
    if not (math.isfinite(target) and target > 0):
        raise ConfigError(f"--target must be a finite loss > 0, got {target!r}")
    return _cell(vs)


def _ranking(by: str | None, metric: str) -> str:
    return by or ("target" if metric == "final_loss" else "final_loss")


def _cell(vs: str | tuple[str, float] | None) -> tuple[str, float] | None:
    if vs is None or isinstance(vs, tuple):
        return vs
    from tinytrain.reports.compare import parse_cell

    try:
        return parse_cell(vs)
    except ValueError as error:
        raise ConfigError(str(error)) from None


# ---------------------------------------------------------------------------------------------------------
# Running


def run_sweep(
    experiment: Experiment,
    store: MLflowStore | str | Path | None = None,
    *,
    force: bool = False,
    executor: str = "inprocess",
    jobs: int = 1,
    scheduler: str | None = None,
    progress: bool = False,
    with_parent: bool = True,
) -> SweepOutcome:
    """Train every cell of the experiment that the store has not finished, and log each run to it.

    Args:
        experiment: From `load_experiment`.
        store: An open store, or its URI; default as `open_store()`.
        force: Train every cell again; the earlier finished runs are soft-deleted.
        executor: `inprocess`, `pool` (local worker processes) or `dask`.
        jobs: Worker processes (with pool or dask).
        scheduler: A running Dask scheduler's address (with dask); without it a local cluster is started.
        progress: Show a progress bar on stderr (when it is a terminal).
        with_parent: Nest the runs under a parent run of the sweep (False: loose runs, as `tinytrain run`).

    Returns:
        What the sweep did: `counts` (finished, diverged, failed, skipped, run ids), `failures`, `seconds`,
        `interrupted`, and `counts.parent_run_id`, the new sweep's id.

    Raises:
        ConfigError: The experiment cannot run as asked (checked before the store is touched).
        TrackingError: The store cannot be used.
        ExecutorError: The executor cannot start.
    """
    from tinytrain.sweep import run_sweep as sweep

    uri = _uri_of(store)
    return sweep(
        experiment,
        uri,
        force=force,
        executor=executor,
        jobs=jobs,
        scheduler=scheduler,
        progress=progress,
        with_parent=with_parent,
    )


def sweep_until_separated(
    experiment: Experiment,
    store: MLflowStore | str | Path | None = None,
    max_seeds: int = 10,
    prune_p: float = 0.1,
    **options: Any,
) -> Separation:
    """Sweep, then add seeds to the cells tied with the best and sweep again, until none is tied or the tied
    cells have `max_seeds` seeds. A tied cell that a one-sided paired Wilcoxon test shows worse than the best
    at p < `prune_p` gets no more seeds (0: never). Options as `run_sweep`."""
    from tinytrain.sweep import sweep_until_separated as until_separated

    return until_separated(experiment, _uri_of(store), max_seeds, prune_p, **options)


def sweep_halving(experiment: Experiment, store: MLflowStore | str | Path | None = None, **options: Any) -> Halving:
    """Successive halving over the experiment's cells (its settings eta, first_rung, tuning_metric), logged as
    one sweep whose losers are logged stopped with their rung. Options as `run_sweep` (but `force`)."""
    from tinytrain.budget import sweep_halving as halving

    return halving(experiment, _uri_of(store), **options)


def halving_lines(halving: Halving) -> list[str]:
    """What a halving sweep says after its summary: each rung, the cells it dropped and why, the steps spent."""
    from tinytrain.budget import halving_lines as lines

    return lines(halving)


def search_space(texts: Sequence[str], experiment: Experiment) -> list[Dimension]:
    """The searched values of `tinytrain search` (NAME=LOW:HIGH[:log]), checked against the experiment."""
    from tinytrain.search import parse_space

    return parse_space(list(texts), experiment)


def run_search(
    experiment: Experiment,
    store: MLflowStore | str | Path | None,
    dimensions: list[Dimension],
    **options: Any,
) -> SearchOutcome:
    """Optuna over `dimensions`: each trial a cell trained over the experiment's seeds, logged as a sweep of its
    own; the study in optuna.db beside the store (or `storage`), resumed when run again. Options as
    tinytrain.search.search: trials, timeout, sampler, seed, storage, study_name, pruner, overrides."""
    from tinytrain.search import search

    return search(experiment, _uri_of(store), dimensions, **options)


def _uri_of(store: MLflowStore | str | Path | None) -> str:
    return store.uri if isinstance(store, MLflowStore) else store_uri(store)


# ---------------------------------------------------------------------------------------------------------
# Trust and services


def check_gradients(**options: Any) -> list[TensorCheck]:
    """Autograd's gradients of the net and loss against central finite differences in float64, per tensor.

    Args:
        **options: `seed`, `entries_per_tensor` (None: every entry), `problem`, `loss`, `batch_size`.

    Returns:
        One check a parameter tensor: `name`, `entries`, `max_relative_error`, `passed(tolerance)`.
    """
    from tinytrain.gradcheck import gradient_check

    return gradient_check(**options)


def start_cluster(port: int, workers: int) -> ClusterState:
    """A local Dask scheduler and workers on 127.0.0.1, in the background (state in `CLUSTER_FOLDER`)."""
    from tinytrain.executors.cluster import start_cluster as start

    return start(port, workers, CLUSTER_FOLDER)


def stop_cluster() -> int:
    """Stop the cluster started from this folder and remove its state; the processes stopped."""
    from tinytrain.executors.cluster import stop_cluster as stop

    return stop(CLUSTER_FOLDER)


def ui_address(host: str = "127.0.0.1", port: int = 5000) -> str:
    """The address `tinytrain ui --host HOST --port PORT` serves the MLflow UI at."""
    from tinytrain.tracking.location import ui_address as address

    return address(host, port)


def ui_command(uri: str) -> str | None:
    """The command that serves a SQLite store's UI at the default address (None for a server: it is one)."""
    from tinytrain.tracking.location import ui_command as command

    return command(uri)


def sweep_links(address: str, experiment_id: str, parent_run_id: str) -> SweepLinks:
    """The MLflow UI's prepared views of a sweep at `address`: its charts, every run, its cell summaries."""
    from tinytrain.tracking.views import sweep_links as links

    return links(address, experiment_id, parent_run_id)


def entry_points(group: str) -> dict[str, str]:
    """The plugins installed under an entry-point group (OPTIMIZER_GROUP, PROBLEM_GROUP): name -> import path,
    read from package metadata (nothing imported)."""
    from tinytrain.plugins import entry_points as found

    return found(group)


# ---------------------------------------------------------------------------------------------------------
# The report modules behind `tinytrain verdict`, `confirm`, `profile` and `curves`, for the command line and for
# scripts that want their records (not DataFrames): imported when first used, so `import tinytrain` stays light.

_REPORT_MODULES = {
    "verdict": "tinytrain.reports.verdict",  # tune(), judge(): each arm's chosen setting, the confirmed verdict
    "profiles": "tinytrain.reports.profiles",  # performance profiles and AlgoPerf's score across sweeps
    "export": "tinytrain.reports.export",  # per-step curves to csv or parquet
    "figures": "tinytrain.reports.plot",  # the loss-curve figure and save_figure()
}


def __getattr__(name: str) -> Any:
    if name in _REPORT_MODULES:
        import importlib

        return importlib.import_module(_REPORT_MODULES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_sweep(
    uri: str, experiment: str | None = None, parent_run_id: str | None = None, with_losses: bool = False
) -> SweepRecord:
    """A sweep's record (its runs as `CellRun`s, with their loss curves if asked): the store's latest sweep, an
    experiment's latest, or the sweep of a parent run id."""
    from tinytrain.tracking.sweep_records import read_sweep as read

    return read(uri, experiment, parent_run_id, with_losses=with_losses)


def confirm(*args: Any, **kwargs: Any) -> SweepOutcome:
    """Run each arm's chosen setting of a tuning sweep on fresh seeds, as a sweep linked to it (see
    `tinytrain.sweep.confirm` for the arguments)."""
    from tinytrain.sweep import confirm as run_confirmation

    return run_confirmation(*args, **kwargs)
