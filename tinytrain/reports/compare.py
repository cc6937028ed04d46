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

import csv
import io
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from tinytrain.reports import stats

if TYPE_CHECKING:
    from tinytrain.tracking.read import CellRun, SweepRecord

FORMATS = ("table", "csv", "json", "markdown")
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
LOSS_FLOOR = stats.LOSS_FLOOR
# What compare can compare: metric -> (the run's metric, its label in tables). The statistics work on a value
# where lower is better and that spans decades: a loss as it is, an accuracy as its error (1 - accuracy).
METRICS: dict[str, tuple[str, str]] = {
    "final_loss": ("final_loss", "final loss"),
    "test_loss": ("final_test_loss", "test loss"),
    "test_accuracy": ("final_test_accuracy", "test error (1 - test accuracy)"),
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

    @property
    def name(self) -> str:
        return cell_name(self.optimizer, self.lr)


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
        if metric == "test_accuracy"
        else (lambda run: metric_value(run, metric))
    )
    return [replace(run, final_loss=value(run)) for run in runs]


def cell_name(optimizer: str, lr: float) -> str:
    """How --vs names a cell: OPTIMIZER@LR."""
    return f"{optimizer}@{lr:g}"


def parse_cell(text: str) -> tuple[str, float]:
    """'adam@0.001' -> ('adam', 0.001); ValueError with the fix otherwise."""
    optimizer, at, lr = text.partition("@")
    try:
        value = float(lr)
    except ValueError:
        value = math.nan
    if not at or not optimizer or not math.isfinite(value):
        raise ValueError(f"--vs {text!r} must name a cell as OPTIMIZER@LR, for example adam@0.001")
    return optimizer, value


def summarize(
    runs: Iterable[CellRun], target: float = stats.TARGET, by: str = "target", vs: tuple[str, float] | None = None
) -> list[CellSummary]:
    """Aggregate the runs of a sweep per (optimizer, lr), ranked, and compared with a baseline.

    by "target" ranks by the median steps to target (then fewer seeds not reaching it, then the median
    final loss); by "final_loss" by the geometric mean of final_loss. The baseline is `vs`, else rank 1.
    """
    if by not in RANKINGS:
        raise ValueError(f"unknown ranking {by!r}: use one of {', '.join(RANKINGS)}")
    cells = _by_cell(runs)
    unranked = [_summarize_cell(optimizer, lr, cell, target) for (optimizer, lr), cell in cells.items()]
    ranked = sorted((row for row in unranked if row.geomean is not None), key=_rank_key(by))
    ranks = {id(row): rank for rank, row in enumerate(ranked, start=1)}
    rows = [replace(row, rank=ranks.get(id(row))) for row in unranked]
    if vs is not None and vs not in cells:
        names = ", ".join(cell_name(*cell) for cell in cells)
        raise ValueError(f"--vs {cell_name(*vs)} is not a cell of this sweep: use one of {names}")
    baseline = vs or ((ranked[0].optimizer, ranked[0].lr) if ranked else None)
    return rows if baseline is None else _against(rows, cells, baseline)


def _rank_key(by: str):
    if by == "final_loss":
        return lambda row: (row.geomean, row.mean)
    return lambda row: (row.steps_to_target is None, row.steps_to_target or 0, row.not_reached, row.median)


def _against(
    rows: list[CellSummary], cells: dict[tuple[str, float], list[CellRun]], baseline: tuple[str, float]
) -> list[CellSummary]:
    """Each row's paired numbers against the baseline cell, p-values Holm-corrected over the table."""
    others = [row for row in rows if (row.optimizer, row.lr) != baseline]
    comparisons = [stats.paired(cells[(row.optimizer, row.lr)], cells[baseline]) for row in others]
    corrected = dict(zip(map(id, others), stats.holm([c.p_value for c in comparisons]), strict=True))
    better = {id(row): c.p_better for row, c in zip(others, comparisons, strict=True)}
    result = []
    for row in rows:
        if (row.optimizer, row.lr) == baseline:
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


def _by_cell(runs: Iterable[CellRun]) -> dict[tuple[str, float], list[CellRun]]:
    """The runs grouped per (optimizer, lr), in the order the cells first appear (the grid's)."""
    cells: dict[tuple[str, float], list[CellRun]] = {}
    for run in runs:
        cells.setdefault((run.optimizer, run.lr), []).append(run)
    return cells


def _summarize_cell(optimizer: str, lr: float, runs: list[CellRun], target: float) -> CellSummary:
    losses = [run.final_loss for run in runs if not run.diverged]
    logs = [stats.log10_loss(loss) for loss in losses]
    numbers = stats.cell_stats(runs, target)
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
    )


def ties_sentence(rows: Sequence[CellSummary]) -> str:
    """What the paired comparison says, in a sentence: how many cells the seeds cannot tell apart."""
    baseline = next((row for row in rows if row.baseline), None)
    if baseline is None:
        return ""
    who = f"the best ({baseline.name})" if baseline.rank == 1 else baseline.name
    tested = [row for row in rows if row.p_value is not None]
    tied = sum(bool(row.tied_with_best) for row in tested)
    counts = sorted({row.seeds for row in rows})
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    if not tested:
        return f"No cell shares a seed with {who}: nothing to compare."
    if tied == 0:
        return f"Every other cell differs from {who} at Holm-corrected p < {stats.ALPHA:g} with {seeds} seeds."
    cells = "1 cell cannot" if tied == 1 else f"{tied} cells cannot"
    return f"{cells} be told apart from {who} with {seeds} seeds (Holm-corrected p >= {stats.ALPHA:g})."


def stopped_sentence(stopped: Sequence[CellRun]) -> str:
    """The cells successive halving stopped early, by the step they reached: they are not in the table."""
    by_step: dict[int | None, list[str]] = {}
    for run in stopped:
        names = by_step.setdefault(len(run.losses) - 1 if run.losses else None, [])
        if cell_name(run.optimizer, run.lr) not in names:
            names.append(cell_name(run.optimizer, run.lr))
    cells = len({(run.optimizer, run.lr) for run in stopped})
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
    if column not in COLUMNS:
        raise ValueError(f"unknown column {column!r}: use one of {', '.join(COLUMNS)}")

    def missing_last(row: CellSummary) -> tuple[bool, Any]:
        value = getattr(row, column)
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
    """How a row stands against the baseline: baseline, tied, better, worse (— without shared seeds)."""
    if row.baseline:
        return "baseline"
    if row.tied_with_best is None:
        return "—"
    if row.tied_with_best:
        return "tied"
    return "better" if (row.p_better or 0) > 0.5 else "worse"


def _headers(target: float) -> tuple[str, ...]:
    return (
        "rank",
        "optimizer",
        "lr",
        f"steps to {target:g}",
        "final loss median [95% CI]",
        "IQM",
        "p_better",
        "p (Holm)",
        "vs baseline",
        "seeds",
        "diverged",
    )


def _cells(row: CellSummary) -> tuple[str, ...]:
    return (
        _number(row.rank, "d"),
        row.optimizer,
        f"{row.lr:g}",
        _steps(row),
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
) -> str:
    """The compare table as text: a rich table, markdown, csv (raw numbers) or json (raw numbers)."""
    if output_format == "csv":
        return _csv(COLUMNS, [[_raw(getattr(row, column)) for column in COLUMNS] for row in rows])
    if output_format == "json":
        document = {
            "title": title,
            "target": target,
            "caption": caption,
            "rows": [{column: getattr(row, column) for column in COLUMNS} for row in rows],
        }
        return json.dumps(document, indent=2) + "\n"
    table = [_cells(row) for row in rows]
    right = {0, 2, 3, 4, 5, 6, 7, 9, 10}
    if output_format == "markdown":
        return _markdown(_headers(target), table, right, title, caption)
    if output_format == "table":
        return _rich_table(_headers(target), table, right, title, caption)
    raise ValueError(f"unknown format {output_format!r}: use one of {', '.join(FORMATS)}")


def _finite(value: float) -> float | None:
    """A float for json and csv: NaN and infinity (a diverged run) become empty."""
    return value if math.isfinite(value) else None


def _raw(value: Any) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def _csv(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int], title: str, caption: str) -> str:
    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---:" if index in right else "---" for index in range(len(header))) + "|")
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    if caption:
        lines += ["", caption]
    return "\n".join(lines) + "\n"


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


def compare_caption(rows: Sequence[CellSummary], by: str = "target", target: float = stats.TARGET) -> str:
    """How the table is ranked and read, and what the paired comparison says."""
    ranking = (
        f"Ranked by the median steps to a loss <= {target:g} over seeds (a seed that never gets there, "
        "or diverges, counts as not reached)"
        if by == "target"
        else "Ranked by the geometric mean of final_loss"
    )
    return (
        f"{ranking}. Median, 95% bootstrap CI and IQM (interquartile mean) are those of log10(final_loss) "
        "over the finished seeds; p_better: share of shared seeds where the cell ends lower than the baseline; "
        "p: two-sided Wilcoxon signed-rank on paired log10 final losses, Holm-corrected. " + ties_sentence(rows)
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
        return self.outcome == "diverged"

    @property
    def change(self) -> float:
        """The relative change of the loss: -0.3 is 30 % lower after training."""
        return self.final_loss / self.initial_loss - 1 if self.initial_loss else math.nan


def before_after(runs: Iterable[CellRun]) -> list[BeforeAfter]:
    """Per run initial -> final loss, each (optimizer, lr) cell followed by its mean over finished seeds."""
    rows: list[BeforeAfter] = []
    for (optimizer, lr), cell in _by_cell(runs).items():
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
        return _csv(
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
        return _markdown(header, table, right, title, "")
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
