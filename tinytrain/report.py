"""Reports of a sweep: the cells compared over seeds, the one-step before/after table, the loss curves.

Input is a tracking.SweepRecord (plain values read from the store); output is text or a matplotlib Figure.
No MLflow and no click here: the CLI prints what this returns and the sweep's Recorder logs it to the
parent run. Final losses span many decades (1e-17 to 1e2 in the default sweep), so besides mean ± std
each cell gets the geometric mean and the spread of log10(final_loss), and cells rank by the geometric
mean: the arithmetic mean of such numbers is the largest seed's value and says little about the others.

Only the standard library is imported at module level, so that `tinytrain --help` stays instant;
rich, numpy and matplotlib are imported where they are used.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tinytrain.tracking.read import CellRun, SweepRecord

FORMATS = ("table", "csv", "json", "markdown")
# The columns of the compare table, in order; any of them sorts it (--sort).
COLUMNS = ("rank", "optimizer", "lr", "mean", "std", "geomean", "log10_std", "min", "max", "seeds",
           "diverged")
LOSS_FLOOR = 1e-45  # a final loss of exactly 0 counts as float32's smallest positive value in log10
SHARED_LEGEND_ABOVE = 6  # learning rates: with more, the loss curves get one legend, not one a panel
SUMMARY_FILES = ("compare.md", "compare.csv", "loss-curves.png")  # what a sweep logs to its parent run
# What compare can rank by: metric -> (the run's metric, its name in tables, higher is better). Losses span
# decades and get geometric statistics; an accuracy lies in [0, 1] and gets plain ones.
METRICS: dict[str, tuple[str, str, bool]] = {
    "final_loss": ("final_loss", "final loss", False),
    "test_loss": ("final_test_loss", "test loss", False),
    "test_accuracy": ("final_test_accuracy", "test accuracy", True),
}


@dataclass(frozen=True)
class CellSummary:
    """One (optimizer, lr) cell over its seeds. Loss statistics leave diverged seeds out (None when no seed
    converged); std and log10_std are sample standard deviations (n - 1), None with fewer than two seeds."""

    rank: int | None  # 1 = the lowest geometric mean; None when every seed diverged
    optimizer: str
    lr: float
    mean: float | None
    std: float | None
    geomean: float | None
    log10_std: float | None
    min: float | None
    max: float | None
    seeds: int  # finished runs of the cell (converged and diverged)
    diverged: int


def metric_value(run: CellRun, metric: str = "final_loss") -> float:
    """A run's value of a compare metric (NaN when the run did not measure it)."""
    name = METRICS[metric][0]
    return run.final_loss if name == "final_loss" else run.metrics.get(name, math.nan)


def summarize(runs: Iterable[CellRun], metric: str = "final_loss") -> list[CellSummary]:
    """Aggregate the runs of a sweep per (optimizer, lr), ranked by the geometric mean of a loss (lowest
    first), or by the mean of an accuracy (highest first)."""
    higher_is_better = METRICS[metric][2]
    unranked = [_summarize_cell(optimizer, lr, cell, metric) for (optimizer, lr), cell in _by_cell(runs).items()]
    if higher_is_better:
        ranked = sorted((row for row in unranked if row.mean is not None), key=lambda row: -row.mean)
    else:
        ranked = sorted((row for row in unranked if row.geomean is not None),
                        key=lambda row: (row.geomean, row.mean))
    ranks = {id(row): rank for rank, row in enumerate(ranked, start=1)}
    return [replace(row, rank=ranks.get(id(row))) for row in unranked]


def _by_cell(runs: Iterable[CellRun]) -> dict[tuple[str, float], list[CellRun]]:
    """The runs grouped per (optimizer, lr), in the order the cells first appear (the grid's)."""
    cells: dict[tuple[str, float], list[CellRun]] = {}
    for run in runs:
        cells.setdefault((run.optimizer, run.lr), []).append(run)
    return cells


def _summarize_cell(optimizer: str, lr: float, runs: list[CellRun], metric: str = "final_loss") -> CellSummary:
    losses = [metric_value(run, metric) for run in runs if not run.diverged]
    logs = [] if METRICS[metric][2] else [math.log10(max(loss, LOSS_FLOOR)) for loss in losses]
    return CellSummary(
        rank=None, optimizer=optimizer, lr=lr,
        mean=statistics.fmean(losses) if losses else None,
        std=statistics.stdev(losses) if len(losses) > 1 else None,
        geomean=10 ** statistics.fmean(logs) if logs else None,
        log10_std=statistics.stdev(logs) if len(logs) > 1 else None,
        min=min(losses, default=None), max=max(losses, default=None),
        seeds=len(runs), diverged=sum(run.diverged for run in runs),
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


def _mean_std(row: CellSummary) -> str:
    if row.mean is None:
        return "—"
    return _number(row.mean) if row.std is None else f"{_number(row.mean)} ± {_number(row.std, '.2g')}"


_HEADERS = ("rank", "optimizer", "lr", "final loss mean ± std", "geo. mean", "log10 std", "min", "max",
            "seeds", "diverged")


def _cells(row: CellSummary) -> tuple[str, ...]:
    return (_number(row.rank, "d"), row.optimizer, f"{row.lr:g}", _mean_std(row), _number(row.geomean),
            _number(row.log10_std, ".2f"), _number(row.min), _number(row.max), str(row.seeds),
            str(row.diverged))


def render_compare(rows: Sequence[CellSummary], output_format: str = "table", title: str = "",
                   caption: str = "", metric: str = "final_loss") -> str:
    """The compare table as text: a rich table, markdown, csv (raw numbers) or json (raw numbers)."""
    if output_format == "csv":
        return _csv(COLUMNS, [[_raw(getattr(row, column)) for column in COLUMNS] for row in rows])
    if output_format == "json":
        return json.dumps({"title": title, "rows": [asdict(row) for row in rows]}, indent=2) + "\n"
    table = [_cells(row) for row in rows]
    right = {0, 2, 3, 4, 5, 6, 7, 8, 9}
    headers = (*_HEADERS[:3], f"{METRICS[metric][1]} mean ± std", *_HEADERS[4:])
    if output_format == "markdown":
        return _markdown(headers, table, right, title, caption)
    if output_format == "table":
        return _rich_table(headers, table, right, title, caption)
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


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int], title: str,
              caption: str) -> str:
    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---:" if index in right else "---" for index in range(len(header))) + "|")
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    if caption:
        lines += ["", caption]
    return "\n".join(lines) + "\n"


def _rich_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int], title: str,
                caption: str, sections: Iterable[int] = ()) -> str:
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
    return (f"{sweep.experiment}: sweep {sweep.parent_run_id}, {METRICS[metric][1]} after {sweep.steps} steps "
            f"over {seeds} seed{'s' if seeds != 1 else ''}")


def compare_caption(metric: str = "final_loss") -> str:
    """What the compare table's rank and columns mean for a metric."""
    if metric == "final_loss":
        return COMPARE_CAPTION
    name, _label, higher_is_better = METRICS[metric]
    if higher_is_better:
        return (f"Ranked by the mean of {name} over seeds, highest first; diverged seeds are left out of the "
                "statistics.")
    return COMPARE_CAPTION.replace("final_loss", name)


COMPARE_CAPTION = ("Ranked by the geometric mean of final_loss; log10 std is the spread of log10(final_loss) "
                   "over seeds; diverged seeds are left out of the statistics.")


# ---------------------------------------------------------------------------------------------------------
# Before -> after: the blog's one-step measurement, per seed


@dataclass(frozen=True)
class BeforeAfter:
    """initial_loss -> final_loss of one run, or (seed None) the means over a cell's converged seeds,
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
    """Per run initial -> final loss, each (optimizer, lr) cell followed by its mean over converged seeds."""
    rows: list[BeforeAfter] = []
    for (optimizer, lr), cell in _by_cell(runs).items():
        rows += [BeforeAfter(optimizer, lr, run.seed, run.initial_loss, run.final_loss, run.outcome)
                 for run in cell]
        converged = [run for run in cell if not run.diverged]
        if converged:
            before = statistics.fmean(run.initial_loss for run in converged)
            after = statistics.fmean(run.final_loss for run in converged)
            rows.append(BeforeAfter(optimizer, lr, None, before, after, "mean"))
    return rows


_BEFORE_AFTER_COLUMNS = ("optimizer", "lr", "seed", "initial_loss", "final_loss", "change", "outcome")


def render_before_after(rows: Sequence[BeforeAfter], output_format: str = "table", title: str = "") -> str:
    """The before -> after rows as text; a mean row closes each cell (seed 'mean')."""
    if output_format in ("csv", "json"):
        records = [{"optimizer": row.optimizer, "lr": row.lr,
                    "seed": "mean" if row.seed is None else row.seed,
                    "initial_loss": _finite(row.initial_loss),
                    "final_loss": None if row.diverged else _finite(row.final_loss),
                    "change": None if row.diverged else _finite(row.change), "outcome": row.outcome}
                   for row in rows]
        if output_format == "json":
            return json.dumps({"title": title, "rows": records}, indent=2) + "\n"
        return _csv(_BEFORE_AFTER_COLUMNS, [[_raw(record[column]) for column in _BEFORE_AFTER_COLUMNS]
                                            for record in records])
    header = ("optimizer", "lr", "seed", "initial loss", "", "final loss", "change", "outcome")
    table = [(row.optimizer, f"{row.lr:g}", "mean" if row.seed is None else str(row.seed),
              f"{row.initial_loss:.4g}", "->", "—" if row.diverged else f"{row.final_loss:.4g}",
              "—" if row.diverged else f"{row.change:+.1%}", "" if row.seed is None else row.outcome)
             for row in rows]
    right = {1, 2, 3, 5, 6}
    if output_format == "markdown":
        return _markdown(header, table, right, title, "")
    if output_format == "table":
        # a rule between cells, and above each cell's mean row
        ends = [index for index, (row, after) in enumerate(zip(rows, rows[1:], strict=False))
                if after.seed is None or (row.optimizer, row.lr) != (after.optimizer, after.lr)]
        return _rich_table(header, table, right, title, "", sections=ends)
    raise ValueError(f"unknown format {output_format!r}: use one of {', '.join(FORMATS)}")


def before_after_title(sweep: SweepRecord) -> str:
    steps = f"{sweep.steps} step{'s' if sweep.steps != 1 else ''}"
    return f"{sweep.experiment}: sweep {sweep.parent_run_id}, loss before -> after {steps}"


# ---------------------------------------------------------------------------------------------------------
# Loss curves


def plot_loss_curves(sweep: SweepRecord) -> Figure:
    """Loss against step on a log axis: a panel per optimizer, a line per lr (the median over converged
    seeds, with a min–max band). Cells whose every seed diverged get no line; the panel names them. Where
    the runs measured test accuracy (digits), each loss panel has the accuracy's panel below it.

    Returns the Figure (drawn with the Agg canvas: no display, no pyplot state) for the caller to save.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    optimizers = list(dict.fromkeys(run.optimizer for run in sweep.runs))
    lrs = sorted({run.lr for run in sweep.runs})
    colours = _lr_colours(lrs)
    accuracy = any(run.curves.get(ACCURACY_CURVE) for run in sweep.runs)
    columns = min(len(optimizers), 3) or 1
    rows = math.ceil(len(optimizers) / columns) or 1
    per_optimizer = 2 if accuracy else 1
    figure = Figure(figsize=(4.6 * columns, 3.6 * rows * per_optimizer + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows * per_optimizer, columns, squeeze=False)
    # a shared y axis makes panels comparable; x stays per panel so that each one keeps its step labels
    loss_axes = [grid[row * per_optimizer][column] for row in range(rows) for column in range(columns)]
    accuracy_axes = ([grid[row * per_optimizer + 1][column] for row in range(rows) for column in range(columns)]
                     if accuracy else [])
    for axes in (loss_axes, accuracy_axes):
        for ax in axes[len(optimizers):]:
            figure.delaxes(ax)
        for ax in axes[1:len(optimizers)]:
            ax.sharey(axes[0])
    seeds = len({run.seed for run in sweep.runs})
    # Many learning rates: one legend for the figure (the colours are the same in every panel), not one a panel,
    # which would cover the curves and cost most of the drawing (0.4 of 0.7 s at 1,000 runs and 20 lrs).
    shared_legend = len(lrs) > SHARED_LEGEND_ABOVE
    for index, optimizer in enumerate(optimizers):
        cells = {lr: [run for run in sweep.runs if run.optimizer == optimizer and run.lr == lr] for lr in lrs}
        ax = loss_axes[index]
        diverged_everywhere = _draw_lines(ax, cells, colours, lambda run: (range(len(run.losses)), run.losses))
        ax.set_yscale("log")
        ax.set_title(optimizer)
        if index % columns == 0:
            ax.set_ylabel("training loss (log scale)")
        notes = [f"diverged at every seed: lr {', '.join(diverged_everywhere)}"] if diverged_everywhere else []
        if shared_legend:  # the lines' labels say how many seeds diverged; with one legend a note does
            partly = [line.get_label().replace(" (", " ", 1).rstrip(")") for line in ax.lines
                      if "diverged" in line.get_label()]
            notes += [f"lr {', '.join(partly)}"] if partly else []
        if notes:
            ax.text(0.02, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize="small", color="firebrick")
        if accuracy:
            ax = accuracy_axes[index]
            _draw_lines(ax, cells, colours, _accuracy_curve)
            ax.set_title(f"{optimizer}: test accuracy")
            if index % columns == 0:
                ax.set_ylabel("test accuracy")
        for ax in [loss_axes[index]] + ([accuracy_axes[index]] if accuracy else []):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
            ax.grid(True, which="major", alpha=0.3)
            ax.set_xlabel("step")
            if ax.lines and not shared_legend:
                ax.legend(title="lr", fontsize="small", title_fontsize="small", loc="best")
    if shared_legend:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=colours[lr], linewidth=1.6) for lr in lrs]
        figure.legend(handles, [f"{lr:g}" for lr in lrs], title="lr", fontsize="small", title_fontsize="small",
                      loc="outside right upper")
    figure.suptitle(f"{sweep.experiment}: {'loss and test accuracy' if accuracy else 'loss'} per step, median over "
                    f"{seeds} seed{'s' if seeds != 1 else ''} (band: min–max)")
    return figure


ACCURACY_CURVE = "test_accuracy"


def _accuracy_curve(run: CellRun) -> tuple[list[int], list[float]]:
    points = run.curves.get(ACCURACY_CURVE, ())
    return [step for step, _value in points], [value for _step, value in points]


def _draw_lines(ax, cells: dict[float, list[CellRun]], colours: dict[float, Any], curve_of) -> list[str]:
    """A line per lr (median over converged seeds, min-max band); returns the lrs where every seed diverged."""
    import numpy as np

    diverged_everywhere = []
    for lr, cell in cells.items():
        if not cell:
            continue
        converged = [curve_of(run) for run in cell if not run.diverged]
        converged = [(list(steps), list(values)) for steps, values in converged if len(values)]
        if not converged:
            diverged_everywhere.append(f"{lr:g}")
            continue
        length = min(len(values) for _steps, values in converged)
        curves = np.array([values[:length] for _steps, values in converged])
        steps = np.array(converged[0][0][:length])
        diverged = len(cell) - len(converged)
        label = f"{lr:g}" + (f" ({diverged}/{len(cell)} diverged)" if diverged else "")
        ax.fill_between(steps, curves.min(axis=0), curves.max(axis=0), color=colours[lr], alpha=0.2, linewidth=0)
        ax.plot(steps, np.median(curves, axis=0), color=colours[lr], linewidth=1.6, label=label)
    return diverged_everywhere


def _lr_colours(lrs: Sequence[float]) -> dict[float, Any]:
    """One colour per lr, the same in every panel, from small (light) to large (dark)."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    if len(lrs) == 1:
        return {lrs[0]: cmap(0.4)}
    return {lr: cmap(0.85 - 0.75 * index / (len(lrs) - 1)) for index, lr in enumerate(lrs)}


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write a figure as a PNG (creating its folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, format="png")
    return path


def write_sweep_summary(sweep: SweepRecord, folder: Path) -> list[Path]:
    """The files a sweep logs to its parent run for the UI: the compare table (markdown, csv), the curves."""
    tested = bool(sweep.runs) and all(not math.isnan(metric_value(run, "test_accuracy")) for run in sweep.runs)
    metric = "test_accuracy" if tested else "final_loss"  # a problem with a test set is compared on it
    rows = sort_rows(summarize(sweep.runs, metric))
    markdown, table_csv, curves = (folder / name for name in SUMMARY_FILES)
    markdown.write_text(render_compare(rows, "markdown", compare_title(sweep, metric), compare_caption(metric),
                                       metric))
    table_csv.write_text(render_compare(rows, "csv"))
    save_figure(plot_loss_curves(sweep), curves)
    return [markdown, table_csv, curves]


class SweepSummary:
    """tracking's SweepSummary: what a sweep logs to its parent run at its end, as the sweep hands it in."""

    def warm_up(self) -> None:
        """Import the plotting stack ahead of the sweep's end, where it would add to the sweep's wall time."""
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401

    def write(self, sweep: SweepRecord, folder: Path) -> None:
        write_sweep_summary(sweep, folder)
