"""A sweep: expand the grid, skip the cells already finished in the store, train the rest, log them all.

Data flows one way: experiment -> specs -> results (an executor) -> records (a Recorder). Everything that
can be wrong with the input is found before the store is touched.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tinytrain.executors import make_executor
from tinytrain.reports.summary import SweepSummaryMaker
from tinytrain.results import DIVERGED, RunResult
from tinytrain.spec import ConfigError, Experiment, RunSpec
from tinytrain.spec.settings import writer_count
from tinytrain.tracking import (
    MadeBy,
    Recorder,
    SweepCounts,
    SweepRecorder,
    TrackingError,
    check_store,
    finished_keys_readonly,
    is_http,
    runs_page_url,
    sweep_search,
)
from tinytrain.tracking.location import DEFAULT_UI_ADDRESS
from tinytrain.tracking.store import TAKEN, WON
from tinytrain.tracking.views import SweepLinks, sweep_links


@dataclass
class SweepOutcome:
    """What a sweep did, for the summary and the exit code."""

    experiment: Experiment
    uri: str
    counts: SweepCounts
    seconds: float
    interrupted: bool = False
    failures: list[str] = field(default_factory=list)
    engines: dict[str, int] = field(default_factory=dict)  # engine that trained them -> runs
    engine_notes: list[str] = field(default_factory=list)  # why a vmap cell trained sequentially, once each
    made_by: MadeBy | None = None  # every cell was done: the sweeps (parent runs) that made them; nothing written

    def engine_line(self) -> str | None:
        """Which engine trained the runs, when the experiment asked for vmap (it may decide otherwise)."""
        if self.experiment.settings["engine"] != "vmap" or not self.engines:
            return None
        used = ", ".join(f"{engine} for {runs} run(s)" for engine, runs in sorted(self.engines.items()))
        notes = "".join(f" ({note})" for note in self.engine_notes)
        return f"Engine: {used}{notes}"

    @property
    def runs_url(self) -> str:
        """The UI's page of the experiment's runs: for a run without a sweep."""
        return runs_page_url(self.uri, self.counts.experiment_id)

    @property
    def links(self) -> SweepLinks | None:
        """The UI's prepared views of this sweep (on the server it wrote to, or where `tinytrain ui` serves)."""
        parent = self.counts.parent_run_id
        if parent is None:
            return None
        return self.links_of(parent)

    def links_of(self, parent_run_id: str) -> SweepLinks:
        address = self.uri if is_http(self.uri) else DEFAULT_UI_ADDRESS
        return sweep_links(address, self.counts.experiment_id, parent_run_id)

    def runs_url_of(self, parent_run_id: str) -> str:
        """The UI's page of a sweep's runs, one row each: for a sweep logged before prepared views."""
        return runs_page_url(self.uri, self.counts.experiment_id, search=sweep_search(parent_run_id))


@dataclass
class CellStatus:
    spec: RunSpec
    done_run_id: str | None  # the finished run of this cell, if the store has one


def plan(experiment: Experiment, uri: str | None) -> list[CellStatus]:
    """Each cell and whether the store already has it finished (for --dry-run: nothing is written)."""
    specs = experiment.specs()
    finished = finished_keys_readonly(uri, experiment.name) if uri is not None else {}
    return [CellStatus(spec, finished.get(spec.key)) for spec in specs]


def run_sweep(
    experiment: Experiment,
    uri: str,
    *,
    force: bool = False,
    executor: str = "inprocess",
    jobs: int = 1,
    scheduler: str | None = None,
    with_parent: bool = True,
    progress: bool = True,
    background: bool = True,
    record_when_done: bool = False,
) -> SweepOutcome:
    """Train every cell not yet finished and log it. Ctrl-C ends the current run as KILLED.

    With `background`, a writer process logs while this one trains (tracking/background.py); this process
    then never imports MLflow. Without it, the same Recorder writes in this process. A sweep whose cells are
    all done writes nothing (no parent run, no summaries) unless `record_when_done`: it reports the sweeps
    that made them.
    """
    started_at = time.perf_counter()
    specs = with_states(experiment.specs(), uri)
    _check_engine_and_executor(experiment, executor)
    check_store(uri)
    finished = finished_keys_readonly(uri, experiment.name)
    todo = [spec for spec in specs if force or spec.key not in finished]
    if specs and not todo and with_parent and not record_when_done:
        return _nothing_to_train(experiment, uri, specs, finished, started_at)
    runner = make_executor(executor, jobs, scheduler)  # an unreachable scheduler fails here, before any run
    shared = not force and executor != "dask"  # a Dask sweep hands the cluster every cell at once
    # only the results of claimed cells go to run writers: a sweep that does not claim has its writer only
    recorder = _recorder(uri, background, _writers(experiment, executor, jobs) if shared else 1)
    failures: list[str] = []
    notes: list[str] = []
    engines: dict[str, int] = {}
    status, interrupted, abandon = "FINISHED", False, False
    try:
        recorder.open(experiment, specs, finished, force, with_parent)
        with _progress(len(specs), len(specs) - len(todo), enabled=progress) as bar:
            started = bar.started(recorder.run_started)
            wave, grows = _wave(experiment, executor, jobs, len(todo)), experiment.settings["engine"] != "vmap"
            results = (
                shared_results(todo, runner, recorder, wave, started, bar.elsewhere, grows)
                if shared
                else runner.run(todo, started)
            )
            for result in results:
                recorder.run_finished(result)
                if result.error:
                    failures.append(f"{result.spec.run_name}: {result.error}")
                _count_engine(result.runtime, engines, notes)
                bar.finished(result.outcome)
    except KeyboardInterrupt:
        status, interrupted = "KILLED", True
    except BaseException as error:
        status, abandon = "FAILED", isinstance(error, TrackingError)  # nothing more can be written
        raise
    finally:
        try:
            counts = recorder.close(status)
        finally:
            runner.close(abandon=abandon)
    return SweepOutcome(
        experiment, uri, counts, time.perf_counter() - started_at, interrupted, failures, engines, notes
    )


def _nothing_to_train(
    experiment: Experiment, uri: str, specs: list[RunSpec], finished: dict[str, str], started_at: float
) -> SweepOutcome:
    """Every cell is done: nothing is written; the outcome names the sweeps whose runs they are."""
    from tinytrain.tracking import sweeps_of_runs

    made_by = sweeps_of_runs(uri, experiment.name, [finished[spec.key] for spec in specs])
    counts = SweepCounts(total=len(specs), skipped=len(specs), experiment_id=made_by.experiment_id)
    counts.recovered = _repair_abandoned(uri, made_by.experiment_id)
    if experiment.settings["record"] == "weights" and made_by.parents:  # a sweep killed before it closed
        from tinytrain.tracking.recorder import complete_cell_models

        counts.cell_models = complete_cell_models(uri, experiment, made_by.parents[0])
    return SweepOutcome(experiment, uri, counts, time.perf_counter() - started_at, made_by=made_by)


def _repair_abandoned(uri: str, experiment_id: str) -> int:
    """Runs left RUNNING by a killed sweep (its parent, a claim) are marked FAILED even by a sweep that trains
    nothing: repairing adds no run. A SQLite store is looked at with plain SQL first, so a store with nothing
    to repair is not written (nor MLflow imported)."""
    if not is_http(uri):
        from tinytrain.tracking.sqlite import query_sqlite

        running = query_sqlite(
            uri,
            "SELECT COUNT(*) FROM runs WHERE experiment_id = ? AND status = 'RUNNING' AND lifecycle_stage = 'active'",
            (experiment_id,),
        )
        if not running or not running[0][0]:
            return 0
    from tinytrain.tracking.store import Store

    with Store(uri) as store:
        return store.recover_abandoned(experiment_id)


# ---------------------------------------------------------------------------------------------------------
# Sweeps that share a grid: each cell is claimed before it trains (tracking: Store.claim_cells)

VMAP_CLAIMS_AT_LEAST = 32  # a smaller grid is claimed whole: the engine decides on its batches as before
CLAIM_POLL_SECONDS = 0.25  # how often a sweep with nothing left to claim looks again at the cells others hold
CLAIM_AHEAD_SECONDS = 1.0  # a block of claims holds about this much of the sweep's training


def shared_results(
    todo: list[RunSpec],
    runner,
    recorder: SweepRecorder,
    wave: int,
    started: Callable[[RunSpec], None] | None = None,
    advance: Callable[[], None] = lambda: None,
    grows: bool = True,
) -> Iterator[RunResult]:
    """The results of the cells this sweep claims, as the executor yields them, until the grid is done.

    Cells are claimed in grid order, a block at a time (see BlockSize), and a block's cells that this sweep
    won are trained together; the next block's claims go out while one trains, so that claiming costs no
    training time, and the first block's while this process loads what training needs (runner.prepare).
    A cell another sweep holds is left to it and looked at again once nothing else is left: finished by
    then, it is theirs (the sweep counts it); if their lease lapsed, this sweep takes it over.
    The sweep ends when every cell is finished, by it or by another, or failed in its own hands.
    """
    pending = list(todo)
    held: list[RunSpec] = []  # cells other sweeps hold: looked at again once nothing else is left
    asked: list[list[RunSpec]] = []  # blocks of claims sent, answers not read yet (in this order)
    size = BlockSize(wave, grows)

    def ask() -> None:
        if pending and not asked:
            block = pending[: size.next(len(pending))]
            del pending[: len(block)]
            recorder.send_claims(block)
            asked.append(block)

    ask()
    runner.prepare(todo)  # while the writer starts and answers the first claims
    while pending or asked or held:
        ask()
        if not asked:
            time.sleep(CLAIM_POLL_SECONDS)
            pending, held = held, []
            continue
        block = asked.pop(0)
        won: list[RunSpec] = []
        for spec, claim in zip(block, recorder.claims_reply(), strict=True):
            if claim.state == WON:
                won.append(spec)
            elif claim.state == TAKEN:
                held.append(spec)
            else:
                advance()  # another sweep finished it
        ask()  # the next block's claims go out while this one trains
        if won:
            began = time.monotonic()
            yield from runner.run(won, started or recorder.run_started)
            size.trained(len(won), time.monotonic() - began)


class BlockSize:
    """How many cells a sweep claims at once. At least `wave` (one per worker; the vmap engine's batch);
    where it `grows`, as many as train in about CLAIM_AHEAD_SECONDS (at the mean time a cell has taken so far)
    so that a claim costs about one run's creation, but at most twice the last block and never more than half
    of what is left unclaimed, so that another sweep gets its share. A block of cells that diverged at once
    takes almost no time: measured alone, it would make the next block hold the rest of the grid, which this
    sweep then trains while the others, with nothing left to claim, wait for it."""

    def __init__(self, wave: int, grows: bool = True):
        self.wave, self.grows = wave, grows
        self.cells, self.seconds, self.last = 0, 0.0, wave

    def next(self, left: int) -> int:
        if not self.grows or not self.cells:
            return self.wave
        ahead = int(CLAIM_AHEAD_SECONDS / max(self.seconds / self.cells, 1e-3))
        return max(self.wave, min(ahead, 2 * self.last, -(-left // 2)))

    def trained(self, cells: int, seconds: float) -> None:
        self.cells, self.seconds, self.last = self.cells + cells, self.seconds + seconds, cells


def _wave(experiment: Experiment, executor: str, jobs: int, cells: int) -> int:
    """The fewest cells a sweep claims at once: one per worker; for the vmap engine, a quarter of the grid and
    at least VMAP_CLAIMS_AT_LEAST (a batched net gains from many cells; another sweep still gets a share)."""
    if experiment.settings["engine"] == "vmap":
        return max(jobs, -(-cells // 4), VMAP_CLAIMS_AT_LEAST)
    return jobs if executor == "pool" or jobs > 1 else 1


def with_states(specs: list[RunSpec], uri: str, always: bool = False) -> list[RunSpec]:
    """The specs with the store's state folder, where their runs save training states and continue from them
    (engines/state.py): runs that checkpoint (checkpoint_every), or `always` (a budget stops and continues
    them). A run killed mid-way then continues from its last saved step, and raising `steps` on a finished
    sweep continues each run from where it ended."""
    from dataclasses import replace

    from tinytrain.tracking.location import state_folder

    folder = str(state_folder(uri))
    return [replace(spec, state_folder=folder) if always or spec.checkpoint_every else spec for spec in specs]


def _check_engine_and_executor(experiment: Experiment, executor: str) -> None:
    if experiment.settings["engine"] == "vmap" and executor == "dask":
        raise ConfigError(
            "engine vmap trains its cells in batched nets on this machine (one per --jobs "
            "worker): drop --executor dask, or use engine sequential to spread runs over a cluster"
        )


def _count_engine(runtime: dict[str, str], engines: dict[str, int], notes: list[str]) -> None:
    """Count the engine that trained a run (a failed run has none) and keep each distinct fallback reason."""
    if "engine" in runtime:
        engines[runtime["engine"]] = engines.get(runtime["engine"], 0) + 1
    note = runtime.get("engine_reason")
    if note and note not in notes:
        notes.append(note)


def _recorder(uri: str, background: bool, writers: int = 1) -> SweepRecorder:
    """The sweep's writer: in a writer process of its own (with `writers` - 1 run writers beside it), or in
    this one."""
    if background:
        from tinytrain.tracking.background import BackgroundRecorder

        return BackgroundRecorder(uri, SweepSummaryMaker(), writers)
    return Recorder(uri, SweepSummaryMaker())


def _writers(experiment: Experiment, executor: str, jobs: int) -> int:
    """How many processes write the sweep's finished runs (the `writers` setting; auto: the cores that its
    training leaves free)."""
    training = jobs if executor == "pool" or jobs > 1 else 1
    return writer_count(experiment.settings["writers"], training * experiment.settings["threads"])


class _progress:
    """A progress bar over the sweep's runs on stderr when it is a terminal: done/total, the cell training
    now, the diverged runs so far, elapsed time and ETA (a spinner shows life while a first run starts)."""

    def __init__(self, total: int, already: int, enabled: bool):
        self.total, self.already = total, already
        self.enabled = enabled and sys.stderr.isatty() and total > already
        self.bar = None
        self.task = None
        self.diverged = 0

    def __enter__(self) -> _progress:
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("runs"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("{task.fields[diverged]}"),
            TextColumn("{task.fields[cell]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task(
            "runs", total=self.total, completed=self.already, cell="starting", diverged=self._diverged()
        )
        return self

    def _diverged(self) -> str:
        return f"[red]{self.diverged} diverged[/red]" if self.diverged else "0 diverged"

    def started(self, record_start: Callable[[RunSpec], None]) -> Callable[[RunSpec], None]:
        """The executor's start callback: records the start, and names the cell on the bar."""

        def start(spec: RunSpec) -> None:
            record_start(spec)
            if self.bar is not None:
                self.bar.update(self.task, cell=f"training {spec.run_name}")

        return start

    def finished(self, outcome: str) -> None:
        self.diverged += outcome == DIVERGED
        if self.bar is not None:
            self.bar.update(self.task, advance=1, diverged=self._diverged())

    def elsewhere(self) -> None:
        """A cell another sweep finished (sweeps that share a grid)."""
        if self.bar is not None:
            self.bar.update(self.task, advance=1)

    def __exit__(self, *exc_info):
        if self.bar is not None:
            self.bar.update(self.task, cell="")
            self.bar.stop()
        return False


# ---------------------------------------------------------------------------------------------------------
# --until-separated: more seeds for the cells that cannot be told apart from the best


@dataclass
class Separation:
    """What --until-separated did: each round's sweep, and whether the best cell stood apart at the end."""

    rounds: list[SweepOutcome]
    separated: bool
    best: str  # the best-ranked cell at the end (OPTIMIZER@LR)
    tied: list[str]  # the cells still tied with it
    seeds: int  # the most seeds any cell has now
    seconds: float
    dropped: dict[str, str] = field(default_factory=dict)  # cell -> why it got no more seeds (paired pruning)
    diverged: list[str] = field(default_factory=list)  # the cells whose every seed diverged (neither tied nor apart)

    @property
    def added_runs(self) -> int:
        return sum(outcome.counts.total - outcome.counts.skipped for outcome in self.rounds[1:])


def next_seeds(
    experiment: Experiment, rows: list, max_seeds: int, dropped: dict[str, str] | None = None
) -> dict[tuple, tuple[int, ...]]:
    """One more seed for the best cell and every cell tied with it that has fewer than max_seeds and was not
    dropped (paired pruning): the smallest integer none of them has run yet, so that the new runs pair by seed."""
    from tinytrain.reports.compare import cell_name

    dropped = dropped or {}
    cells = [
        cell
        for cell in (
            (row.optimizer, row.lr, *getattr(row, "arm", ())) for row in rows if row.baseline or row.tied_with_best
        )
        if cell_name(*cell) not in dropped
    ]
    seeds: dict[tuple, set[int]] = {cell: set() for cell in cells}
    for spec in experiment.specs():
        if experiment.cell(spec) in seeds:
            seeds[experiment.cell(spec)].add(spec.seed)
    growing = [cell for cell in cells if len(seeds[cell]) < max_seeds]
    used = set().union(*(seeds[cell] for cell in cells)) if cells else set()
    seed = next(value for value in range(len(used) + 1) if value not in used)
    extra = dict(experiment.extra_seeds)
    for cell in growing:
        extra[cell] = (*extra.get(cell, ()), seed)
    return extra if growing else {}


def sweep_until_separated(
    experiment: Experiment, uri: str, max_seeds: int, prune_p: float = 0.1, **options
) -> Separation:
    """Sweep the grid, then add seeds to the cells tied with the best and sweep again (resume skips what is
    done), until the best is separated from every other cell or the tied cells have max_seeds seeds. A tied
    cell that a one-sided paired test already shows worse than the best gets no more seeds (prune_worse_cells).

    The comparison is compare's default (time to target, paired Wilcoxon, Holm); it reads the store back
    in this process, so MLflow is imported here. Each round is a sweep of its own, whose parent run keeps
    the experiment with its extra seeds: the last one's compare table covers every seed.
    """
    from dataclasses import replace

    from tinytrain.reports.compare import summarize
    from tinytrain.tracking import read_sweep

    started = time.perf_counter()
    options["record_when_done"] = True  # each round's parent keeps the experiment its comparison reads
    rounds = [run_sweep(experiment, uri, **options)]
    dropped: dict[str, str] = {}
    while True:
        outcome = rounds[-1]
        sweep = read_sweep(uri, parent_run_id=outcome.counts.parent_run_id, with_losses=True)
        rows = summarize(sweep.runs)
        best = next(row for row in rows if row.baseline)
        tied = [row.name for row in rows if row.tied_with_best]
        seeds = max(row.seeds for row in rows)
        if prune_p > 0:
            prune_worse_cells(sweep.runs, rows, dropped, prune_p)
        tied = [name for name in tied if name not in dropped]  # a dropped cell is told apart, one-sided
        extra = next_seeds(experiment, rows, max_seeds, dropped) if tied else {}
        if not extra or outcome.interrupted or outcome.counts.failed:
            gone = [row.name for row in rows if row.seeds and row.diverged == row.seeds]
            seconds = time.perf_counter() - started
            return Separation(rounds, not tied, best.name, tied, seeds, seconds, dropped, gone)
        experiment = replace(experiment, extra_seeds=extra)
        rounds.append(run_sweep(experiment, uri, **options))


def prune_worse_cells(runs, rows: list, dropped: dict[str, str], threshold: float) -> None:
    """Paired pruning of seeds: each cell still tied with the best that a one-sided paired Wilcoxon test (its
    log10 final losses against the best's, seed by seed) shows worse at p < threshold joins `dropped`, with
    why; it gets no more seeds (as Optuna's WilcoxonPruner prunes a trial; its default threshold is 0.1).
    A dropped cell stays dropped."""
    from tinytrain.reports.stats import worse_p

    best = next(row for row in rows if row.baseline)
    by_cell: dict[tuple, list] = {}
    for run in runs:
        by_cell.setdefault(run.cell, []).append(run)
    for row in rows:
        if not row.tied_with_best or row.name in dropped:
            continue
        seeds, p_value = worse_p(by_cell[row.cell], by_cell[best.cell])
        if p_value is not None and p_value < threshold:
            dropped[row.name] = (
                f"worse than the best ({best.name}) by a one-sided paired Wilcoxon test over {seeds} seeds, "
                f"p = {p_value:.3g} < {threshold:g}"
            )


# ---------------------------------------------------------------------------------------------------------
# confirm: each arm's chosen setting on fresh seeds, as a sweep linked to the tuning sweep


@dataclass
class Confirmation:
    """What `confirm` did: the tuning it read, each round's sweep on fresh seeds, and the verdict on them."""

    tuning: Any  # reports.verdict.Tuning
    rounds: list[SweepOutcome]
    verdict: Any  # reports.verdict.Verdict
    seeds: tuple[int, ...]
    seconds: float


def confirmation_experiment(
    experiment: Experiment, arms: list, seeds: tuple[int, ...], tuning_sweep: str
) -> Experiment:
    """The tuning experiment narrowed to each arm's chosen cell, on `seeds`, naming the tuning sweep.

    Settings, variants and the experiment's name stay the tuning sweep's: the runs of a chosen cell differ from
    its tuning runs only by their seeds, and land in the same MLflow experiment.
    """
    from dataclasses import replace

    # a cell is (optimizer, lr, *its other axes): the filter keeps exactly each arm's chosen cell
    cells = tuple(dict.fromkeys((arm.optimizer, arm.lr, *arm.recipe) for arm in arms))
    grid = {
        **experiment.grid,
        "optimizer": list(dict.fromkeys(cell[0] for cell in cells)),
        "lr": sorted({cell[1] for cell in cells}),
        "seed": list(seeds),
    }
    return replace(experiment, grid=grid, cells=cells, confirms=tuning_sweep, extra_seeds={}, drawn=())


def tuning_sweep_of(uri: str, experiment: str | None, sweep_id: str | None):
    """The tuning sweep to confirm: the one given, else the latest (or, if that is a confirmation, its tuning
    sweep). Refused: a confirmation sweep given by id."""
    from tinytrain.reports.verdict import VerdictError
    from tinytrain.tracking import read_sweep

    sweep = read_sweep(uri, experiment, sweep_id)
    if sweep.confirms and sweep_id is not None:
        raise VerdictError(
            f"sweep {sweep_id} is a confirmation sweep: give its tuning sweep (--sweep {sweep.confirms})"
        )
    if sweep.confirms:
        sweep = read_sweep(uri, parent_run_id=sweep.confirms)
    return sweep


def confirm(
    uri: str,
    count: int,
    *,
    experiment: str | None = None,
    sweep_id: str | None = None,
    first_seed: int | None = None,
    arms: list[str] | None = None,
    tuning_metric: str | None = None,
    metric: str | None = None,
    until_separated: bool = False,
    max_seeds: int = 20,
    **options,
) -> Confirmation:
    """Run each arm's chosen setting on `count` fresh seeds and judge them; with until_separated, add one seed
    to every arm and sweep again (paired, resumed) until the best differs from each other arm, or max_seeds.

    Every check (a missing arm, an unknown arm, seeds that were tuning seeds) comes before anything is written.
    """
    from tinytrain.reports import verdict as report
    from tinytrain.spec import load_experiment
    from tinytrain.tracking import read_sweep, read_sweep_experiment

    started = time.perf_counter()
    tuning_sweep = tuning_sweep_of(uri, experiment, sweep_id)
    parent = tuning_sweep.parent_run_id
    tuning_experiment = load_experiment(f"run {parent}", text=read_sweep_experiment(uri, parent), recorded=True)
    tuning = report.tune(tuning_sweep, tuning_metric)
    chosen = report.confirmation_cells(tuning, arms)
    report.check_armed(tuning_sweep, arms or [report.arm_of(spec) for spec in tuning_experiment.specs()])
    tuning_seeds = {spec.seed for spec in tuning_experiment.specs()}
    seeds = report.fresh_seeds(count, tuning_seeds, first_seed)
    rounds: list[SweepOutcome] = []
    while True:
        narrowed = confirmation_experiment(tuning_experiment, chosen, seeds, parent)
        rounds.append(run_sweep(narrowed, uri, **options))
        outcome = rounds[-1]
        if outcome.interrupted or outcome.counts.parent_run_id is None:
            return Confirmation(tuning, rounds, None, seeds, time.perf_counter() - started)
        record = read_sweep(uri, parent_run_id=outcome.counts.parent_run_id)
        verdict = report.judge(record, metric)
        more = until_separated and not verdict.separated and len(seeds) < max_seeds and not outcome.counts.failed
        if not more:
            return Confirmation(tuning, rounds, verdict, seeds, time.perf_counter() - started)
        seeds = (*seeds, _next_fresh(seeds, tuning_seeds))


def _next_fresh(seeds: tuple[int, ...], tuning_seeds: set[int]) -> int:
    seed = max(seeds) + 1
    while seed in tuning_seeds:
        seed += 1
    return seed
