"""Reports of a sweep: the cells compared over seeds, and the one-step before/after table.

Input is a tracking SweepRecord (plain values read from the store); output is text. No MLflow and no click
here: the CLI prints what this returns and the sweep's summary (summary.py) logs it to the parent run. Each
row has compare's statistics (stats.py: median, IQM and bootstrap interval of log10(final_loss), time to
target, paired by seed against a baseline with Holm's correction) besides mean ± std, the geometric mean and
the spread of log10(final_loss); rows rank by time to target, or (by="final_loss") by the geometric mean.

Only the standard library is imported at module level, so that `tinytrain --help` stays instant;
rich and scipy are imported where they are used.
"""

from __future__ import annotations

import io
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from tinytrain.reports import stats, tables
from tinytrain.results import DIVERGED
from tinytrain.spec.experiment import cell_label, parse_cell_label

if TYPE_CHECKING:
    from tinytrain.tracking.sweep_records import CellRun, SweepRecord

FORMATS = ("table", "csv", "json", "markdown", "latex")
RANKINGS = ("target", "final_loss")  # --by: the median time to target, or the geometric mean of final_loss
# The columns of the compare table, in order (csv, json); any of them sorts it (--sort).
COLUMNS = (
    "rank",
    "optimizer",
    "lr",
    "steps_to_target",
    "not_reached",
    "median",
    "ci_low",
    "ci_high",
    "iqm",
    "p_better",
    "p_value",
    "tied_with_best",
    "baseline",
    "mean",
    "std",
    "geomean",
    "log10_std",
    "min",
    "max",
    "seeds",
    "diverged",
)
# What compare can compare: metric -> (the run's metric, its label in tables). The statistics work on a value
# where lower is better and that spans decades: a loss as it is, an accuracy as its error (1 - accuracy).
METRICS: dict[str, tuple[str, str]] = {
    "final_loss": ("final_loss", "final loss"),
    "test_loss": ("final_test_loss", "test loss"),
    "test_accuracy": ("final_test_accuracy", "test error (1 - test accuracy)"),
    "val_loss": ("final_val_loss", "validation loss"),
    "val_accuracy": ("final_val_accuracy", "validation error (1 - validation accuracy)"),
}


@dataclass(frozen=True)
class CellSummary:
    """One (optimizer, lr) cell over its seeds. Loss statistics leave diverged seeds out (None when no seed
    finished); std and log10_std are sample standard deviations (n - 1), None with fewer than two seeds.
    median, iqm and the interval are those of log10(final_loss), given back as losses (see stats.py); the
    paired numbers compare the cell with the baseline (the best-ranked cell, or --vs) seed by seed."""

    rank: int | None  # 1 = the best by the ranking; None when every seed diverged
    optimizer: str
    lr: float
    mean: float | None
    std: float | None
    geomean: float | None
    log10_std: float | None
    min: float | None
    max: float | None
    seeds: int  # finished runs of the cell (finished and diverged)
    diverged: int
    median: float | None = None
    iqm: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    steps_to_target: float | None = None  # median over seeds; None: the median seed never reached it
    not_reached: int = 0
    p_better: float | None = None  # None for the baseline itself, and without shared seeds
    p_value: float | None = None  # Holm-corrected over the table's cells
    tied_with_best: bool | None = None  # corrected p >= 0.05 against the baseline; None for the baseline
    baseline: bool = False
    arm: tuple[tuple[str, Any], ...] = ()  # the cell's value of each of the grid's other axes

    @property
    def cell(self) -> tuple:
        return (self.optimizer, self.lr, *self.arm)

    @property
    def name(self) -> str:
        return cell_name(*self.cell)

    def value(self, column: str) -> Any:
        """A column's value: a field, or one of the grid's other axes."""
        return dict(self.arm)[column] if column in dict(self.arm) else getattr(self, column)


def metric_value(run: CellRun, metric: str = "final_loss") -> float:
    """A run's value of a compare metric (NaN when the run did not measure it)."""
    name = METRICS[metric][0]
    return run.final_loss if name == "final_loss" else run.metrics.get(name, math.nan)


def as_metric(runs: Iterable[CellRun], metric: str) -> list[CellRun]:
    """The runs with the metric in place of final_loss (an accuracy as its error), so that every statistic of
    the table (median, IQM, interval, the paired test) is of that metric. Time to target stays the training
    loss's."""
    if metric == "final_loss":
        return list(runs)
    value = (
        (lambda run: 1.0 - metric_value(run, metric))
        if metric.endswith("accuracy")
        else (lambda run: metric_value(run, metric))
    )
    return [replace(run, final_loss=value(run)) for run in runs]


def cell_name(optimizer: str, lr: float, *arm: tuple[str, Any]) -> str:
    """How --vs names a cell: OPTIMIZER@LR, then [AXIS=VALUE,...] where the grid has other axes."""
    return cell_label((optimizer, lr, *arm))


def parse_cell(text: str) -> tuple:
    """'adam@0.001' -> ('adam', 0.001), 'adam@0.001[schedule=cosine]' -> ('adam', 0.001, ('schedule',
    'cosine')); ValueError with the fix otherwise."""
    try:
        return parse_cell_label(text)
    except ValueError:
        raise ValueError(
            f"--vs {text!r} must name a cell as OPTIMIZER@LR, for example adam@0.001 (with other axes: "
            "adam@0.001[schedule=cosine])"
        ) from None


def summarize(
    runs: Iterable[CellRun], target: float = stats.TARGET, by: str = "target", vs: tuple | None = None
) -> list[CellSummary]:
    """Aggregate the runs of a sweep per (optimizer, lr), ranked, and compared with a baseline.

    by "target" ranks by the median steps to target (then fewer seeds not reaching it, then the median
    final loss); by "final_loss" by the geometric mean of final_loss. The baseline is `vs`, else rank 1.
    """
    if by not in RANKINGS:
        raise ValueError(f"unknown ranking {by!r}: use one of {', '.join(RANKINGS)}")
    cells = _by_cell(runs)
    numbers = stats.cells_stats(list(cells.values()), target)
    unranked = [
        _summarize_cell(key, cell, cell_numbers)
        for (key, cell), cell_numbers in zip(cells.items(), numbers, strict=True)
    ]
    ranked = sorted((row for row in unranked if row.geomean is not None), key=_rank_key(by))
    ranks = {id(row): rank for rank, row in enumerate(ranked, start=1)}
    rows = [replace(row, rank=ranks.get(id(row))) for row in unranked]
    if vs is not None and vs not in cells:
        names = ", ".join(cell_name(*cell) for cell in cells)
        raise ValueError(f"--vs {cell_name(*vs)} is not a cell of this sweep: use one of {names}")
    baseline = vs or (ranked[0].cell if ranked else None)
    return rows if baseline is None else _against(rows, cells, baseline)


def _rank_key(by: str):
    if by == "final_loss":
        return lambda row: (row.geomean, row.mean)
    return lambda row: (row.steps_to_target is None, row.steps_to_target or 0, row.not_reached, row.median)


def _against(rows: list[CellSummary], cells: dict[tuple, list[CellRun]], baseline: tuple) -> list[CellSummary]:
    """Each row's paired numbers against the baseline cell, p-values Holm-corrected over the table."""
    others = [row for row in rows if row.cell != baseline]
    comparisons = stats.paired_each([cells[row.cell] for row in others], cells[baseline])
    corrected = dict(zip(map(id, others), stats.holm([c.p_value for c in comparisons]), strict=True))
    better = {id(row): c.p_better for row, c in zip(others, comparisons, strict=True)}
    result = []
    for row in rows:
        if row.cell == baseline:
            result.append(replace(row, baseline=True))
            continue
        p_value = corrected[id(row)]
        result.append(
            replace(
                row,
                p_better=better[id(row)],
                p_value=p_value,
                tied_with_best=None if p_value is None else p_value >= stats.ALPHA,
            )
        )
    return result


def _by_cell(runs: Iterable[CellRun]) -> dict[tuple, list[CellRun]]:
    """The runs grouped per cell (optimizer, lr and the other axes), in the order the cells first appear."""
    cells: dict[tuple, list[CellRun]] = {}
    for run in runs:
        cells.setdefault(run.cell, []).append(run)
    return cells


def _summarize_cell(cell: tuple, runs: list[CellRun], numbers: stats.CellStats) -> CellSummary:
    optimizer, lr, *arm = cell
    losses = [run.final_loss for run in runs if not run.diverged]
    logs = [stats.log10_loss(loss) for loss in losses]
    return CellSummary(
        rank=None,
        optimizer=optimizer,
        lr=lr,
        mean=statistics.fmean(losses) if losses else None,
        std=statistics.stdev(losses) if len(losses) > 1 else None,
        geomean=10 ** statistics.fmean(logs) if logs else None,
        log10_std=statistics.stdev(logs) if len(logs) > 1 else None,
        min=min(losses, default=None),
        max=max(losses, default=None),
        seeds=len(runs),
        diverged=sum(run.diverged for run in runs),
        **asdict(numbers),
        arm=tuple(arm),
    )


def ties_sentence(rows: Sequence[CellSummary]) -> str:
    """What the paired comparison says, in a sentence: how many cells the seeds cannot tell apart. A cell whose
    every seed diverged is neither tied nor "differs at p < 0.05" (its test has no finite loss to pair): it is
    counted apart."""
    baseline = next((row for row in rows if row.baseline), None)
    if baseline is None:
        return ""
    who = f"the best ({baseline.name})" if baseline.rank == 1 else baseline.name
    tested = [row for row in rows if row.p_value is not None]
    diverged = sum(verdict(row) == "diverged" for row in tested)
    compared = [row for row in tested if verdict(row) != "diverged"]
    tied = sum(verdict(row) == "tied" for row in compared)
    counts = sorted({row.seeds for row in rows})
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    if not tested:
        return f"No cell shares a seed with {who}: nothing to compare."
    if not compared:
        return "Every other cell diverged in every seed."
    also = "" if not diverged else f"; {_how_many_cells(diverged)} diverged in every seed"
    if tied == 0:
        which = "Every other cell that trained" if diverged else "Every other cell"
        return f"{which} differs from {who} at Holm-corrected p < {stats.ALPHA:g} with {seeds} seeds{also}."
    cannot = f"{_how_many_cells(tied)} cannot be told apart from {who} with {seeds} seeds"
    return f"{cannot} (Holm-corrected p >= {stats.ALPHA:g}){also}."


def _how_many_cells(count: int) -> str:
    return "1 cell" if count == 1 else f"{count} cells"


def columns_of(rows: Sequence[CellSummary]) -> tuple[str, ...]:
    """COLUMNS, with the grid's other axes (schedule, weight_decay, ...) after lr."""
    axes = tuple(axis for axis, _value in rows[0].arm) if rows else ()
    at = COLUMNS.index("lr") + 1
    return COLUMNS[:at] + axes + COLUMNS[at:]


def stopped_sentence(stopped: Sequence[CellRun]) -> str:
    """The cells successive halving stopped early, by the step they reached: they are not in the table."""
    by_step: dict[int | None, list[str]] = {}
    for run in stopped:
        names = by_step.setdefault(len(run.losses) - 1 if run.losses else None, [])
        if cell_name(*run.cell) not in names:
            names.append(cell_name(*run.cell))
    cells = len({run.cell for run in stopped})
    parts = [
        (f"at step {step}: " if step is not None else "") + ", ".join(names)
        for step, names in sorted(by_step.items(), key=lambda item: item[0] or 0)
    ]
    return (
        f"the budget (successive halving) stopped {cells} cell(s) early ({len(stopped)} runs, outcome stopped), "
        f"not in the table: {'; '.join(parts)}"
    )


def sort_rows(rows: Sequence[CellSummary], column: str = "rank") -> list[CellSummary]:
    """Rows ordered by a column, ascending; empty values last, ties in rank order."""
    if column not in columns_of(rows):
        raise ValueError(f"unknown column {column!r}: use one of {', '.join(columns_of(rows))}")

    def missing_last(row: CellSummary) -> tuple[bool, Any]:
        value = row.value(column)
        return value is None, 0 if value is None else value

    by_rank = sorted(rows, key=lambda row: (row.rank is None, row.rank or 0))
    return sorted(by_rank, key=missing_last)


# ---------------------------------------------------------------------------------------------------------
# Rendering: the same rows as a terminal table (rich), markdown, csv or json


def _number(value: float | None, spec: str = ".3g") -> str:
    return "—" if value is None else format(value, spec)


def _steps(row: CellSummary) -> str:
    """Median steps to target, and how many seeds never got there."""
    total = row.seeds
    if row.steps_to_target is None:
        return f"not reached ({row.not_reached}/{total})" if total else "—"
    steps = f"{row.steps_to_target:g}"
    return steps + (f" ({row.not_reached}/{total} not)" if row.not_reached else "")


def _median_ci(row: CellSummary) -> str:
    if row.median is None:
        return "—"
    if row.ci_low is None:
        return _number(row.median, ".2g")
    return f"{_number(row.median, '.2g')} [{_number(row.ci_low, '.2g')}, {_number(row.ci_high, '.2g')}]"


def verdict(row: CellSummary) -> str:
    """How a row stands against the baseline: baseline, diverged (every seed: never "tied"), tied, better, worse
    (— without shared seeds)."""
    if row.baseline:
        return "baseline"
    if row.seeds and row.diverged == row.seeds:
        return "diverged"
    if row.tied_with_best is None:
        return "—"
    if row.tied_with_best:
        return "tied"
    return "better" if (row.p_better or 0) > 0.5 else "worse"


def _headers(
    target: float, metric: str = "final_loss", by: str = "target", axes: tuple[str, ...] = ()
) -> tuple[str, ...]:
    return (
        "rank",
        "optimizer",
        "lr",
        *axes,
        f"steps to loss {target:g}" if by == "target" else f"geomean {_short_label(metric)}",
        f"{_short_label(metric)} median [95% CI]",
        "IQM",
        "p_better",
        "p (Holm)",
        "vs baseline",
        "seeds",
        "diverged",
    )


def _short_label(metric: str) -> str:
    """A column's name for the metric: 'final loss', 'test loss', 'test error'."""
    return "test error" if metric == "test_accuracy" else METRICS[metric][1]


def _cells(row: CellSummary, by: str = "target") -> tuple[str, ...]:
    return (
        _number(row.rank, "d"),
        row.optimizer,
        f"{row.lr:g}",
        *(f"{value:g}" if isinstance(value, float) else str(value) for _axis, value in row.arm),
        _steps(row) if by == "target" else _number(row.geomean, ".3g"),
        _median_ci(row),
        _number(row.iqm, ".2g"),
        _number(row.p_better, ".2f"),
        _number(row.p_value, ".2g"),
        verdict(row),
        str(row.seeds),
        str(row.diverged),
    )


def render_compare(
    rows: Sequence[CellSummary],
    output_format: str = "table",
    title: str = "",
    caption: str = "",
    target: float = stats.TARGET,
    metric: str = "final_loss",
    by: str = "target",
    width: int | None = None,
) -> str:
    """The compare table as text: a rich table (fitted to `width` columns: fewer columns, or stacked rows),
    markdown, LaTeX (booktabs), csv (raw numbers) or json (raw numbers); each with its title and caption.
    The headers name the metric; the ranking's column (steps to target, or the geometric mean) is shown."""
    columns = columns_of(rows)
    if output_format == "csv":
        return tables.csv_text(
            columns, [[_raw(row.value(column)) for column in columns] for row in rows], title, caption
        )
    if output_format == "json":
        document = {
            "title": title,
            "target": target,
            "caption": caption,
            "rows": [{column: row.value(column) for column in columns} for row in rows],
        }
        return json.dumps(document, indent=2) + "\n"
    table = [_cells(row, by) for row in rows]
    axes = tuple(axis for axis, _value in rows[0].arm) if rows else ()
    header = _headers(target, metric, by, axes)
    left = {"optimizer", "vs baseline", *axes}
    right = {index for index, name in enumerate(header) if name not in left}
    if output_format == "markdown":
        return tables.markdown(header, table, right, title, caption)
    if output_format == "latex":
        return tables.latex(header, table, right, title, caption)
    if output_format == "table":
        if width is None:
            return _rich_table(header, table, right, title, caption)
        # kept when columns must go: the rank, the cell (its optimizer, lr and axes), the ranking's column and
        # the standing
        n = len(axes)
        keep = (0, 1, 2, *range(3, 3 + n), 3 + n, 8 + n)
        return tables.terminal_table(header, table, right, title, caption, width, keep=keep)
    raise ValueError(f"unknown format {output_format!r}: use one of {', '.join(FORMATS)}")


def _finite(value: float) -> float | None:
    """A float for json and csv: NaN and infinity (a diverged run) become empty."""
    return value if math.isfinite(value) else None


def _raw(value: Any) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def _rich_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    right: set[int],
    title: str,
    caption: str,
    sections: Iterable[int] = (),
) -> str:
    """A table laid out by rich, as plain text: no colours and no wrapping, the same on a terminal and in
    a pipe or a test."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for index, name in enumerate(header):
        table.add_column(name, justify="right" if index in right else "left", no_wrap=True)
    section_ends = set(sections)
    for index, row in enumerate(rows):
        table.add_row(*row, end_section=index in section_ends)
    buffer = io.StringIO()
    Console(file=buffer, width=250, color_system=None, highlight=False, emoji=False).print(table)
    lines = [line.rstrip() for line in buffer.getvalue().rstrip().splitlines()]
    return "\n".join(([title] if title else []) + lines + (["", caption] if caption else [])) + "\n"


def compare_title(sweep: SweepRecord, metric: str = "final_loss") -> str:
    """One line that says which sweep a table is about."""
    seeds = len({run.seed for run in sweep.runs})
    return (
        f"{sweep.experiment}: sweep {sweep.parent_run_id}, {METRICS[metric][1]} after {sweep.steps} steps "
        f"over {seeds} seed{'s' if seeds != 1 else ''}"
    )


def compare_caption(
    rows: Sequence[CellSummary], by: str = "target", target: float = stats.TARGET, metric: str = "final_loss"
) -> str:
    """How the table is ranked (its first sentence, one line) and read, and what the paired comparison says."""
    name = METRICS[metric][0]
    ranking = (
        f"Rank 1 reaches a training loss <= {target:g} in the fewest steps (median over seeds; a seed that "
        "never gets there, or diverges, counts as not reached)"
        if by == "target"
        else f"Rank 1 has the lowest geometric mean of {_short_label(metric)} over seeds"
    )
    what = f"log10(1 - {name})" if metric.endswith("accuracy") else f"log10({name})"
    return (
        f"{ranking}. Median, 95% bootstrap CI and IQM (interquartile mean) are those of {what} "
        "over the finished seeds; p_better: share of shared seeds where the cell ends lower than the baseline; "
        f"p: two-sided Wilcoxon signed-rank on paired {what}, Holm-corrected. " + ties_sentence(rows)
    )


# ---------------------------------------------------------------------------------------------------------
# Before -> after: the blog's one-step measurement, per seed


@dataclass(frozen=True)
class BeforeAfter:
    """initial_loss -> final_loss of one run, or (seed None) the means over a cell's finished seeds,
    whose change is then that of the mean losses."""

    optimizer: str
    lr: float
    seed: int | None
    initial_loss: float
    final_loss: float
    outcome: str

    @property
    def diverged(self) -> bool:
        return self.outcome == DIVERGED

    @property
    def change(self) -> float:
        """The relative change of the loss: -0.3 is 30 % lower after training."""
        return self.final_loss / self.initial_loss - 1 if self.initial_loss else math.nan


def before_after(runs: Iterable[CellRun]) -> list[BeforeAfter]:
    """Per run initial -> final loss, each (optimizer, lr) cell followed by its mean over finished seeds."""
    rows: list[BeforeAfter] = []
    for (optimizer, lr, *arm), cell in _by_cell(runs).items():
        optimizer = cell[0].arm_name if arm else optimizer
        rows += [BeforeAfter(optimizer, lr, run.seed, run.initial_loss, run.final_loss, run.outcome) for run in cell]
        finished = [run for run in cell if not run.diverged]
        if finished:
            before = statistics.fmean(run.initial_loss for run in finished)
            after = statistics.fmean(run.final_loss for run in finished)
            rows.append(BeforeAfter(optimizer, lr, None, before, after, "mean"))
    return rows


_BEFORE_AFTER_COLUMNS = ("optimizer", "lr", "seed", "initial_loss", "final_loss", "change", "outcome")


def render_before_after(rows: Sequence[BeforeAfter], output_format: str = "table", title: str = "") -> str:
    """The before -> after rows as text; a mean row closes each cell (seed 'mean')."""
    if output_format in ("csv", "json"):
        records = [
            {
                "optimizer": row.optimizer,
                "lr": row.lr,
                "seed": "mean" if row.seed is None else row.seed,
                "initial_loss": _finite(row.initial_loss),
                "final_loss": None if row.diverged else _finite(row.final_loss),
                "change": None if row.diverged else _finite(row.change),
                "outcome": row.outcome,
            }
            for row in rows
        ]
        if output_format == "json":
            return json.dumps({"title": title, "rows": records}, indent=2) + "\n"
        return tables.csv_text(
            _BEFORE_AFTER_COLUMNS, [[_raw(record[column]) for column in _BEFORE_AFTER_COLUMNS] for record in records]
        )
    header = ("optimizer", "lr", "seed", "initial loss", "", "final loss", "change", "outcome")
    table = [
        (
            row.optimizer,
            f"{row.lr:g}",
            "mean" if row.seed is None else str(row.seed),
            f"{row.initial_loss:.4g}",
            "->",
            "—" if row.diverged else f"{row.final_loss:.4g}",
            "—" if row.diverged else f"{row.change:+.1%}",
            "" if row.seed is None else row.outcome,
        )
        for row in rows
    ]
    right = {1, 2, 3, 5, 6}
    if output_format == "markdown":
        return tables.markdown(header, table, right, title, "")
    if output_format == "latex":
        return tables.latex(header, table, right, title, "")
    if output_format == "table":
        # a rule between cells, and above each cell's mean row
        ends = [
            index
            for index, (row, after) in enumerate(zip(rows, rows[1:], strict=False))
            if after.seed is None or (row.optimizer, row.lr) != (after.optimizer, after.lr)
        ]
        return _rich_table(header, table, right, title, "", sections=ends)
    raise ValueError(f"unknown format {output_format!r}: use one of {', '.join(FORMATS)}")


def before_after_title(sweep: SweepRecord) -> str:
    steps = f"{sweep.steps} step{'s' if sweep.steps != 1 else ''}"
    return f"{sweep.experiment}: sweep {sweep.parent_run_id}, loss before -> after {steps}"
