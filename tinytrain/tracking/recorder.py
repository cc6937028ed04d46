"""The single writing path of a sweep: a Recorder opens it, records each run's start and result, closes it.

The sweep drives any SweepRecorder the same way: this Recorder in its own process, or the BackgroundRecorder
(background.py) that runs one in a writer process. What the sweep logs to its parent run at its end (the
compare table and the loss curves) is the sweep's to decide: it hands a SummaryMaker in, and tracking never
imports the reports. The summary is made from the sweep as the store holds it (summary_input) into a
MadeSummary (make_summary), which close() logs: all three in this process, or, behind a BackgroundRecorder,
the reading and the logging in the writer and the making in the sweep's process (the writer's core is the
one every sweep waits for).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tinytrain.results import DIVERGED, FAILED, RunResult
from tinytrain.spec import Experiment, RunSpec
from tinytrain.spec.settings import TUNING_METRICS
from tinytrain.tracking.contract import ERROR, MEDIAN_OF, RECORD_WEIGHTS
from tinytrain.tracking.location import is_http
from tinytrain.tracking.provenance import environment
from tinytrain.tracking.sqlite import checkpoint_sqlite
from tinytrain.tracking.store import DONE, WON, Claim, Store
from tinytrain.tracking.sweep_records import CellRun, SweepRecord, sweep_record, sweep_record_sqlite
from tinytrain.tracking.views import view_tags

# A later read's word that a claim still holds its cell serves its result this long: a cell that trains longer
# is read again at its result (as a claim's last check; its training hides the read).
HOLDING_FRESH_SECONDS = 2.0
LEASE_ENV = "TINYTRAIN_LEASE_SECONDS"  # how long a claim holds a cell unless its sweep renews it
DEFAULT_LEASE = 60.0


def lease_seconds() -> float:
    """The lease of this sweep's claims (TINYTRAIN_LEASE_SECONDS, else 60 s), renewed every third of it."""
    import os

    try:
        value = float(os.environ.get(LEASE_ENV) or DEFAULT_LEASE)
    except ValueError:
        value = DEFAULT_LEASE
    return max(value, 1.0)


@dataclass
class SweepCounts:
    """What a sweep wrote: where, and how many runs of each outcome."""

    total: int = 0
    skipped: int = 0
    finished: int = 0
    diverged: int = 0
    failed: int = 0
    killed: int = 0
    replaced: int = 0
    stopped: int = 0  # runs the budget stopped early (successive halving)
    recovered: int = 0  # runs left RUNNING by killed processes, marked FAILED when this sweep opened
    others: int = 0  # cells that other sweeps sharing the grid finished while this one ran
    taken_over: int = 0  # claims of other sweeps whose lease lapsed, taken over by this one
    cell_models: int = 0  # record = weights: LoggedModels of cells' median seeds made when the sweep closed
    experiment_id: str = ""
    parent_run_id: str | None = None
    run_ids: dict[str, str] = field(default_factory=dict)  # key -> run id of every run written

    def figures(self) -> dict[str, int]:
        """The counts a sweep's parent run keeps as metrics (runs_total, runs_skipped, ...)."""
        names = ("total", "skipped", "finished", "diverged", "failed", "killed", "replaced")
        figures = {f"runs_{name}": getattr(self, name) for name in names}
        if self.stopped:  # only a sweep with a budget stops runs
            figures["runs_stopped"] = self.stopped
        return figures


@dataclass(frozen=True)
class CellSummaryRun:
    """A run that summarises one (optimizer, lr) cell of a sweep over its seeds, for the UI's table and charts.

    Logged nested under the sweep's parent with KIND = CELL_SUMMARY and no run key, so that resume, compare,
    --dry-run and reproduce never take it for a cell's run.
    """

    name: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]  # one value each (step 0)
    curves: dict[str, list[float]]  # metric -> value at steps 0, 1, ...


class SummaryMaker(Protocol):
    """Makes what a sweep logs to its parent run once it has run to its end (reports.summary.SweepSummaryMaker)."""

    def warm_up(self) -> None:
        """Load what write() needs, ahead of time (the sweep does it while its writer logs the last runs)."""

    def write(self, sweep: SweepRecord, folder: Path) -> None:
        """Write the summary's files of a sweep into folder."""

    def cell_runs(self, sweep: SweepRecord) -> list[CellSummaryRun]:
        """One summary run per cell of the sweep."""


def error_reason(error: BaseException) -> str:
    """An error as the one line a sweep reports and tags: its type and its message."""
    return f"{type(error).__name__}: {error}"


@dataclass(frozen=True)
class MadeSummary:
    """A sweep's summary as made: the parent run's files (name -> content) and a run per cell; or, if it could
    not be made, why (the sweep still succeeds: the parent run is tagged with the reason)."""

    files: dict[str, bytes] = field(default_factory=dict)
    cells: list[CellSummaryRun] = field(default_factory=list)
    error: str | None = None


def make_summary(summary: SummaryMaker, sweep: SweepRecord) -> MadeSummary:
    """The summary of a sweep (its files and its cell runs); an error becomes the reason, never an exception."""
    try:
        with tempfile.TemporaryDirectory() as folder:
            summary.write(sweep, Path(folder))
            files = {path.name: path.read_bytes() for path in sorted(Path(folder).iterdir())}
        return MadeSummary(files, summary.cell_runs(sweep))
    except Exception as error:  # noqa: BLE001 - the runs are logged; a missing picture must not undo that
        return MadeSummary(error=error_reason(error))


class SweepRecorder(Protocol):
    """How a sweep writes: open, a start and a result per run (in the order it makes them), close."""

    def open(
        self,
        experiment: Experiment,
        specs: list[RunSpec],
        finished: dict[str, str],
        force: bool = False,
        with_parent: bool = True,
    ) -> None: ...

    def claim(self, spec: RunSpec) -> Claim: ...

    def send_claims(self, specs: list[RunSpec]) -> None:
        """Claim a block of cells, the answers to be read with claims_reply (in the order the blocks were
        sent): a sweep claims the next block while the current one trains."""

    def claims_reply(self) -> list[Claim]: ...

    def run_started(self, spec: RunSpec) -> None: ...

    def run_finished(self, result: RunResult) -> None: ...

    def close(self, status: str = "FINISHED", reason: str | None = None) -> SweepCounts: ...


@dataclass
class RunsWritten:
    """What a run writer (writers.py) wrote of a sweep, gathered into its Recorder when the sweep closes."""

    counts: SweepCounts
    logged_losses: dict[str, tuple[float, ...]]
    final_metric: str


class Recorder:
    """The single writing path of a sweep: opens it, records each run's start and result, closes it.

    Calls come in the order the sweep makes them; results are written as they arrive. The same object
    runs in this process or, behind background.BackgroundRecorder, in a process of its own.
    """

    def __init__(self, uri: str, summary: SummaryMaker | None = None):
        self.uri = uri
        self.summary = summary
        self.store: Store | None = None
        self.experiment_id = ""
        self.parent_run_id: str | None = None
        self.run_ids: dict[str, str] = {}  # key -> run id of the runs this sweep started
        self.replace: dict[str, str] = {}  # key -> finished run id that a --force re-run replaces
        self.counts = SweepCounts()
        self.environment: dict[str, str] = {}
        self.experiment: Experiment | None = None
        self.logged_losses: dict[str, tuple[float, ...]] = {}  # key -> losses of the runs this sweep wrote
        self.final_metric = "final_loss"  # what the sweep's views show; final_test_accuracy where runs have it
        self.claimed: set[str] = set()  # keys of the cells this sweep claimed and has not recorded yet
        self.claims_sent: list[list[RunSpec]] = []  # in this process, claims sent are made when their reply is read
        self.started: set[str] = set()  # keys of the runs handed to the executor
        self.lease = lease_seconds()
        self.renewed_at = 0.0
        self.lease_until: dict[str, float] = {}  # key -> the end of the lease this sweep last set on its claim
        self.holding: dict[
            str, tuple[Claim, float]
        ] = {}  # key -> whether its claim held the cell at a later read, when
        self.gathered = 0  # runs that run writers wrote (merge)

    def open(
        self,
        experiment: Experiment,
        specs: list[RunSpec],
        finished: dict[str, str],
        force: bool = False,
        with_parent: bool = True,
    ) -> None:
        """Find the experiment, mark abandoned runs FAILED, start the parent run.

        `finished` (run key -> run id) is what the sweep read before it started training: those cells are
        skipped, or, with force, replaced once their new run is finished.
        """
        self.store = Store(self.uri, writer=True)
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
            self._write_views()

    def _write_views(self) -> None:
        """The UI's prepared views of this sweep (views.py), as experiment tags: grouped by the grid's axes."""
        axes = ["optimizer", "lr", *(axis for axis in self.experiment.grid if axis not in ("optimizer", "lr", "seed"))]
        self.store.set_experiment_tags(self.experiment_id, view_tags(self.parent_run_id, axes, self.final_metric))

    def claim(self, spec: RunSpec) -> Claim:
        """Claim a cell before it trains (sweeps that share a grid): its RUNNING run, with a lease."""
        return self.claim_many([spec])[0]

    def claim_many(self, specs: list[RunSpec]) -> list[Claim]:
        """Claim a block of cells before they train (Store.claim_cells: one read, the creates, one wait, one
        read back): a Claim per spec, in order. The first read also looks again at the cells this sweep
        holds from earlier blocks: what it finds lets their results be recorded without a read of their own
        (run_finished)."""
        self.renew_leases()
        held = self._held()
        claims, holding = self.store.claim_cells(
            self.experiment_id, self.parent_run_id, specs, self.environment, self.lease, held
        )
        self._note_holding(holding)
        for spec, claim in zip(specs, claims, strict=True):
            if claim.state == WON:
                self.run_ids[spec.key] = claim.run_id
                self.claimed.add(spec.key)
                self.lease_until[spec.key] = claim.lease_until
                self.counts.taken_over += claim.took_over
            elif claim.state == DONE:
                self.counts.others += 1
        return claims

    def send_claims(self, specs: list[RunSpec]) -> None:
        self.claims_sent.append(list(specs))

    def claims_reply(self) -> list[Claim]:
        return self.claim_many(self.claims_sent.pop(0))

    def renew_leases(self) -> None:
        """Push further the lease of every claim this sweep holds that has less than two thirds of a lease
        left (looked at every sixth of a lease): a claim is renewed about every third of a lease."""
        now = time.time()
        if not self.claimed or now - self.renewed_at < self.lease / 6:
            return
        for key in self.claimed:
            if self.lease_until.get(key, 0.0) - now < self.lease * 2 / 3:
                self.lease_until[key] = self.store.renew_lease(self.run_ids[key], self.lease)
        self.renewed_at = now

    def _held(self) -> dict[str, str]:
        """key -> run id of the claims this sweep won and has not recorded a result of."""
        return {key: self.run_ids[key] for key in self.claimed if key in self.run_ids}

    def _note_holding(self, holding: dict[str, Claim]) -> None:
        """Keep what a read found of this sweep's claims (a later read than the one that won them)."""
        now = time.time()
        for key, claim in holding.items():
            self.holding[key] = (claim, now)

    def holds(self, key: str, run_id: str) -> Claim:
        """Whether this sweep's claim still holds a cell, before its result is recorded: what a read made after
        the claim was won found (a later block's claims read the cells this sweep holds), if that read is
        less than HOLDING_FRESH_SECONDS old and the claim's lease as this sweep last set it has more than a
        third of a lease to run (no other sweep may take it over before it lapses); else one read of every
        cell this sweep holds, kept for the results that follow."""
        known, read_at = self.holding.pop(key, (None, 0.0))
        now = time.time()
        if (
            known is not None
            and now - read_at < HOLDING_FRESH_SECONDS
            and (known.state != WON or self.lease_until.get(key, 0.0) - now > self.lease / 3)
        ):
            return known
        holding = self.store.holding(self.experiment_id, self._held())
        self._note_holding(holding)
        self.holding.pop(key, None)
        return holding[key]

    def run_started(self, spec: RunSpec) -> None:
        self.started.add(spec.key)
        if spec.key in self.claimed:  # its claim is its run
            return
        self.run_ids[spec.key] = self.store.start_run(self.experiment_id, self.parent_run_id, spec, self.environment)

    def run_finished(self, result: RunResult) -> None:
        key = result.spec.key
        run_id = self.run_ids.get(key) or self.store.start_run(
            self.experiment_id, self.parent_run_id, result.spec, self.environment
        )
        if key in self.claimed:
            holder = self.holds(key, run_id)
            self.claimed.discard(key)
            self.lease_until.pop(key, None)
            if holder.state != WON:  # another sweep's claim won after all, or took it over: its run counts
                self.run_ids.pop(key)
                if holder.run_id is not None:  # ours is still RUNNING
                    self.store.release_claim(run_id, holder)
                self.counts.others += 1
                return
        self.store.finish_run(run_id, result, self.experiment_id)
        self.run_ids.pop(key, None)
        self.counts.run_ids[key] = run_id
        self.logged_losses[key] = tuple(
            math.copysign(sys.float_info.max, v) if math.isinf(v) else v for v in result.losses
        )  # as MLflow stores them
        setattr(self.counts, result.outcome, getattr(self.counts, result.outcome) + 1)
        if "test_accuracy" in result.metrics and self.final_metric != "final_test_accuracy":
            self.final_metric = "final_test_accuracy"  # a problem with a test set is compared on it
            if self.parent_run_id:
                self._write_views()
        if result.outcome != FAILED and key in self.replace:
            self.store.delete_run(self.replace.pop(key))  # soft delete: one finished run per cell
            self.counts.replaced += 1

    def hand_over(self, key: str) -> None:
        """A claimed cell's result goes to a run writer (writers.py): this Recorder no longer renews its lease
        or closes its run; the run writer checks the claim still holds and writes the run."""
        self.claimed.discard(key)
        self.run_ids.pop(key, None)
        self.lease_until.pop(key, None)
        self.holding.pop(key, None)

    def write_claimed(self, experiment: str, run_id: str, result: RunResult) -> None:
        """In a run writer: write a claimed cell's result to the run its claim made, if the claim still holds
        (run_finished's check). The store is opened at the first result: the sweep's writer has made the
        experiment by then."""
        if self.store is None:
            self.store = Store(self.uri, writer=True)
            self.experiment_id = self.store.experiment_id(experiment, create=False) or ""
        self.run_ids[result.spec.key] = run_id
        self.claimed.add(result.spec.key)
        self.run_finished(result)

    def written(self) -> RunsWritten:
        """What this Recorder wrote, as a run writer hands it back to the sweep's own Recorder."""
        return RunsWritten(self.counts, self.logged_losses, self.final_metric)

    def merge(self, part: RunsWritten) -> None:
        """Count the runs a run writer wrote (outcomes, losses for the summary) as this sweep's own."""
        for name in ("finished", "diverged", "failed", "stopped", "others"):
            setattr(self.counts, name, getattr(self.counts, name) + getattr(part.counts, name))
        self.counts.run_ids.update(part.counts.run_ids)
        self.gathered += len(part.counts.run_ids)
        self.logged_losses.update(part.logged_losses)
        if part.final_metric != self.final_metric and part.final_metric == "final_test_accuracy":
            self.final_metric = part.final_metric
            if self.parent_run_id:
                self._write_views()

    def wants_summary(self, status: str) -> bool:
        """Whether the sweep gets a summary when it closes with this status: it ran to its end (FINISHED)
        with any finished cell, and has a parent run to log it to."""
        finished_cells = self.counts.skipped + self.counts.finished + self.counts.diverged + self.counts.stopped
        return bool(self.parent_run_id) and status == "FINISHED" and finished_cells > 0

    def summary_input(self) -> SweepRecord:
        """The sweep as the store holds it, with every loss history: what its summary is made from (plain SQL
        on a SQLite store, a few queries; the losses this sweep logged are not read back)."""
        read = sweep_record if is_http(self.uri) else sweep_record_sqlite
        return read(
            self.store if is_http(self.uri) else self.uri,
            self.parent_run_id,
            self.experiment,
            with_losses=True,
            known_losses=self.logged_losses,
        )

    def close(
        self, status: str = "FINISHED", reason: str | None = None, made: MadeSummary | None = None
    ) -> SweepCounts:
        """End the runs still open (KILLED when interrupted) and the parent run; return the counts.

        A sweep that ran to its end, with any finished cell, first gets its summary (table and loss curves):
        `made` if the sweep made it (from summary_input), else made here with this Recorder's SummaryMaker.
        """
        for key in [key for key in self.claimed if key not in self.started and key in self.run_ids]:
            self.store.release_claim(self.run_ids.pop(key), None)  # claimed ahead, never trained: no run
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
            if status != "KILLED" and self.experiment.settings["record"] == RECORD_WEIGHTS:
                self._log_cell_models()
            if self.wants_summary(status) and (made is not None or self.summary is not None):
                self._log_sweep_summary(made)
            self.store.end_sweep(self.parent_run_id, self.counts.figures(), status)
        if self.store is not None:
            self.store.close()
        checkpoint_sqlite(self.uri)  # everything written now survives an OS crash too
        return self.counts

    def _log_cell_models(self) -> None:
        """record = weights: a LoggedModel for each cell of the sweep whose seeds are all recorded, of its median
        seed, made from that run's weights artifact (log_cell_models). Read from the store, so it does not
        matter which process wrote the runs, nor which sweep: a sweep resumed after a kill makes the ones its
        first part did not. A failure is reported and tagged on the parent; it never fails the sweep."""
        import logging

        try:
            read = sweep_record if is_http(self.uri) else sweep_record_sqlite
            record = read(self.store if is_http(self.uri) else self.uri, self.parent_run_id, self.experiment)
            self.counts.cell_models = log_cell_models(self.store, self.experiment, record)
        except Exception as error:  # noqa: BLE001 - the runs and their weights are logged: report, don't undo
            message = error_reason(error)
            logging.getLogger("tinytrain").warning("no cell models for sweep %s: %s", self.parent_run_id, message)
            self.store.client.set_tag(self.parent_run_id, ERROR, f"cell models: {message}"[:5000])

    def _log_sweep_summary(self, made: MadeSummary | None) -> None:
        """The compare table (markdown, csv) and the loss curves as artifacts of the parent run, and a summary
        run per cell nested under it, for the UI.

        A summary that cannot be made (or read, or logged) is reported and tagged on the parent; it never
        fails the sweep.
        """
        import logging

        try:
            if made is None:
                made = make_summary(self.summary, self.summary_input())
            message = made.error
            if message is None:
                with tempfile.TemporaryDirectory() as folder:
                    for name, content in made.files.items():
                        (Path(folder) / name).write_bytes(content)
                    self.store.client.log_artifacts(self.parent_run_id, folder)
                self.store.log_cell_summaries(self.experiment_id, self.parent_run_id, made.cells)
                return
        except Exception as error:  # noqa: BLE001 - the runs are logged; a missing picture must not undo that
            message = error_reason(error)
        logging.getLogger("tinytrain").warning("no summary logged for sweep %s: %s", self.parent_run_id, message)
        self.store.client.set_tag(self.parent_run_id, ERROR, f"summary: {message}"[:5000])


def tuning_value(run: CellRun, metric: str) -> tuple[str, float]:
    """A recorded run's tuning metric (lower is better) and its name: the setting, or for auto the first of
    TUNING_METRICS it has; an accuracy as its error; a diverged run, or one without the metric, is worst (inf).
    (budget.tuning_value ranks results in training; this ranks what the store holds.)"""
    name = metric
    if metric == "auto":
        name = next((name for name in TUNING_METRICS if name == "final_loss" or name in run.metrics), "final_loss")
    if run.outcome == DIVERGED:
        return name, math.inf
    value = run.final_loss if name in ("final_loss", "loss") else run.metrics.get(name, math.nan)
    if name.endswith("accuracy"):
        value = 1.0 - value
    return name, value if math.isfinite(value) else math.inf


def median_seeds(experiment: Experiment, record: SweepRecord) -> list[tuple[str, RunSpec, CellRun, str, int]]:
    """For each cell of the sweep whose every seed has a finished or diverged run: its key (the spec's with
    seed -1, a seed no run has), the median seed's spec and run (the lower of two middles, ties by seed), the
    tuning metric's name and the seeds it was taken over. A cell whose median seed diverged has no weights:
    it is left out."""
    from dataclasses import replace

    runs = {run.key: run for run in record.runs}  # runs a budget stopped are apart: their cell did not end
    cells: dict[tuple, list[RunSpec]] = {}
    for spec in experiment.specs():
        cells.setdefault(experiment.cell(spec), []).append(spec)
    chosen = []
    metric = experiment.settings["tuning_metric"]
    for specs in cells.values():
        if not all(spec.key in runs for spec in specs):
            continue
        ranked = sorted(
            ((*tuning_value(runs[spec.key], metric), spec.seed, spec) for spec in specs), key=lambda r: r[:3]
        )
        name, _value, _seed, spec = ranked[(len(ranked) - 1) // 2]
        if runs[spec.key].outcome != DIVERGED:
            chosen.append((replace(spec, seed=-1).key, spec, runs[spec.key], name, len(specs)))
    return chosen


def log_cell_models(store: Store, experiment: Experiment, record: SweepRecord) -> int:
    """The LoggedModel of each finished cell's median seed that the store does not have yet; returns how many
    were made. Each is made from its run's weights artifact, at the run's last step, and linked to the run."""
    made = 0
    existing = store.existing_cell_models(record.experiment_id)
    for cell_key, spec, run, metric, seeds in median_seeds(experiment, record):
        if cell_key in existing:
            continue
        tags = {MEDIAN_OF: f"{seeds} seeds by {metric}"}
        store.log_cell_model(record.experiment_id, run.run_id, spec, spec.steps, cell_key, tags)
        made += 1
    return made


def complete_cell_models(uri: str, experiment: Experiment, parent_run_id: str) -> int:
    """record = weights, for a sweep that finds every cell done and trains nothing: the models of the cells that
    a sweep killed before it closed left without one (log_cell_models), read through the parent run of a sweep
    that made the runs; returns how many were made."""
    with Store(uri, writer=True) as store:
        read = sweep_record if is_http(uri) else sweep_record_sqlite
        record = read(store if is_http(uri) else uri, parent_run_id, experiment)
        return log_cell_models(store, experiment, record)
