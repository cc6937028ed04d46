"""What a sweep leaves for the MLflow UI at its end: files on its parent run, and a summary run per cell.

The parent run keeps the compare table (compare.md, compare.csv) and the loss curves (loss-curves.png).
Each (optimizer, lr) cell gets a run of its own nested under the parent (tinytrain.kind = cell), so that
the UI's table and charts show the statistics of compare without a download: the median `loss` over the
cell's finished seeds at every step with its quartiles (`loss_q25`, `loss_q75`), the median, IQM and 95%
interval of the final loss in decades (log10_final_loss_*: the UI's bar charts have a linear axis, on which
1e-15 and 1e-7 look the same), the time to target and the paired comparison with the best cell.
"""

from __future__ import annotations

from pathlib import Path

from tinytrain.reports import compare, plot, stats
from tinytrain.tracking.recorder import CellSummaryRun
from tinytrain.tracking.sweep_records import SweepRecord

SUMMARY_FILES = ("compare.md", "compare.csv", "loss-curves.png")  # what a sweep logs to its parent run


def write_sweep_summary(sweep: SweepRecord, folder: Path) -> list[Path]:
    """The files a sweep logs to its parent run for the UI: the compare table (markdown, csv), the curves."""
    import math

    tested = bool(sweep.runs) and all(
        not math.isnan(compare.metric_value(run, "test_accuracy")) for run in sweep.runs if not run.diverged
    )
    metric = "test_accuracy" if tested else "final_loss"  # a problem with a test set is compared on it
    by = "final_loss" if tested else "target"
    rows = compare.sort_rows(compare.summarize(compare.as_metric(sweep.runs, metric), by=by))
    markdown, table_csv, figure = (folder / name for name in SUMMARY_FILES)
    title, caption = compare.compare_title(sweep, metric), compare.compare_caption(rows, by, metric=metric)
    if sweep.stopped:
        caption += f"\n\nNote: {compare.stopped_sentence(sweep.stopped)}."
    markdown.write_text(compare.render_compare(rows, "markdown", title, caption, metric=metric, by=by))
    table_csv.write_text(compare.render_compare(rows, "csv", title, caption))
    plot.save_figure(plot.plot_loss_curves(sweep), figure)
    return [markdown, table_csv, figure]


def cell_summary_runs(sweep: SweepRecord, target: float = stats.TARGET) -> list[CellSummaryRun]:
    """One summary run per cell, in rank order: its compare row as metrics, its median curve as steps."""
    import numpy as np

    runs_by_cell: dict[tuple, list] = {}
    for run in sweep.runs:
        runs_by_cell.setdefault(run.cell, []).append(run)
    summaries = []
    for row in compare.sort_rows(compare.summarize(sweep.runs, target)):
        finished = [run.losses for run in runs_by_cell[row.cell] if not run.diverged and run.losses]
        curves_by_name: dict[str, list[float]] = {}
        if finished:
            losses = np.array([curve[: min(map(len, finished))] for curve in finished])
            q25, median, q75 = np.percentile(losses, [25, 50, 75], axis=0)
            curves_by_name = {"loss": median.tolist(), "loss_q25": q25.tolist(), "loss_q75": q75.tolist()}
        decades = {"median": row.median, "iqm": row.iqm, "ci_low": row.ci_low, "ci_high": row.ci_high}
        numbers = {
            **{
                f"log10_final_loss_{name}": None if value is None else stats.log10_loss(value)
                for name, value in decades.items()
            },
            "rank": row.rank,
            "steps_to_target": row.steps_to_target,
            "seeds_not_reached": row.not_reached,
            "p_better": row.p_better,
            "p_value": row.p_value,
            "seeds": row.seeds,
            "seeds_diverged": row.diverged,
        }
        summaries.append(
            CellSummaryRun(
                name=f"{row.optimizer}{''.join(f'-{axis}{value}' for axis, value in row.arm)}-lr{row.lr:g}-median",
                params={
                    "optimizer": row.optimizer,
                    "lr": repr(row.lr),
                    **{axis: str(value) for axis, value in row.arm},
                    "target": repr(target),
                    "seeds": str(row.seeds),
                },
                tags={"tinytrain.cell": row.name, "tinytrain.versus_best": compare.verdict(row)},
                metrics={key: float(value) for key, value in numbers.items() if value is not None},
                curves=curves_by_name,
            )
        )
    return summaries


class SweepSummaryMaker:
    """tracking's SummaryMaker: makes what a sweep logs to its parent run at its end, as the sweep hands it in."""

    def warm_up(self) -> None:
        """Import the plotting and statistics stack ahead of the sweep's end, where it would add to its time."""
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
        import scipy.stats  # noqa: F401

    def write(self, sweep: SweepRecord, folder: Path) -> None:
        write_sweep_summary(sweep, folder)

    def cell_runs(self, sweep: SweepRecord) -> list[CellSummaryRun]:
        return cell_summary_runs(sweep)
