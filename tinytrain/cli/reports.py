"""The commands that read a sweep back: compare (the table over seeds) and plot (the loss curves)."""

from __future__ import annotations

import math

import click

from tinytrain.cli.common import BadInput, resolved_uri, tracking_uri_option, translate_errors
from tinytrain.reports.compare import COLUMNS, FORMATS, METRICS, RANKINGS

experiment_option = click.option(
    "--experiment",
    "experiment_name",
    metavar="NAME",
    default=None,
    help="The MLflow experiment [default: optimizer-grid, or the experiment of --sweep].",
)
sweep_option = click.option(
    "--sweep",
    "sweep_id",
    metavar="PARENT_RUN_ID",
    default=None,
    help="A sweep's parent run id [default: the experiment's latest sweep].",
)


def note_stopped_cells(sweep) -> None:
    """Cells a budget stopped early (successive halving): left out of the table, named below it on stderr."""
    from tinytrain.reports.compare import stopped_sentence

    if sweep.stopped:
        click.echo(f"note: {stopped_sentence(sweep.stopped)}", err=True)


def warn_missing_cells(sweep) -> None:
    """Cells of the sweep that no finished run answers for: say so, on stderr, below the data."""
    if sweep.missing:
        names = ", ".join(sweep.missing[:5]) + (", ..." if len(sweep.missing) > 5 else "")
        click.echo(
            f"note: {len(sweep.missing)} of {sweep.cells} cells have no finished run (failed, killed "
            f"or not run yet: {names}); run the sweep again to fill them",
            err=True,
        )


@click.command()
@experiment_option
@sweep_option
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table for a terminal; markdown, csv and json for documents and scripts.",
)
@click.option(
    "--sort", type=click.Choice(COLUMNS), default=None, help="Order the rows by this column, ascending [default: rank]."
)
@click.option(
    "--target",
    type=float,
    default=1e-3,
    show_default=True,
    metavar="LOSS",
    help="Time to target: the first step whose loss is at or below LOSS.",
)
@click.option(
    "--by",
    type=click.Choice(RANKINGS),
    default=None,
    help="Rank by the median steps to --target, or by the geometric mean of final_loss (of --metric) "
    "[default: target; final_loss with --metric].",
)
@click.option(
    "--metric",
    type=click.Choice(list(METRICS)),
    default="final_loss",
    show_default=True,
    help="What the statistics are of: final_loss (training), or the test set's test_loss or "
    "test_accuracy (digits; compared as its error, 1 - accuracy, lower is better).",
)
@click.option(
    "--vs",
    "vs",
    metavar="OPTIMIZER@LR",
    default=None,
    help="The baseline of the paired comparison [default: the best-ranked cell], e.g. adam@0.001.",
)
@click.option(
    "--before-after",
    is_flag=True,
    help="Instead: initial_loss -> final_loss of each seed, and their mean (the one-step measurement).",
)
@tracking_uri_option
@translate_errors
def compare(
    experiment_name,
    sweep_id,
    output_format,
    sort,
    target,
    by,
    metric,
    vs,
    before_after,  # noqa: PLR0913
    tracking_uri,
):
    """Compare the cells of a sweep over their seeds: one row per (optimizer, lr).

    Per row: the median steps to a loss <= --target over seeds (and how many never got there); the median,
    95% bootstrap interval and interquartile mean of log10(final_loss); and, paired by seed against a
    baseline (the best-ranked cell, or --vs), p_better and a Holm-corrected Wilcoxon p. Cells the seeds
    cannot tell apart from the baseline are marked tied. Rows rank by time to target (--by final_loss: by
    the geometric mean of final_loss). Diverged seeds are counted and left out of the loss statistics.
    Every cell of the sweep counts, also those it skipped because an earlier sweep had finished them.

    \b
    Example:
        tinytrain compare
        tinytrain compare --vs adam@0.001 --format markdown
        tinytrain compare --experiment one-step-adam --before-after
        tinytrain compare --sweep 3f2a9c... --by final_loss --sort lr
        tinytrain compare --experiment digits-grid --metric test_accuracy
    """
    from tinytrain.reports import compare as report

    if before_after and (sort or vs):
        raise BadInput("--sort and --vs are for the compare table; --before-after lists the runs in grid order")
    if not (math.isfinite(target) and target > 0):
        raise BadInput(f"--target must be a finite loss > 0, got {target!r}")
    baseline = _baseline(vs)
    from tinytrain.tracking import read_sweep

    sweep = read_sweep(resolved_uri(tracking_uri), experiment_name, sweep_id, with_losses=not before_after)
    if before_after:
        runs = report.before_after(sweep.runs)
        text = report.render_before_after(runs, output_format, report.before_after_title(sweep))
    else:
        untested = [run for run in sweep.runs if not run.diverged and math.isnan(report.metric_value(run, metric))]
        if untested:
            raise BadInput(
                f"sweep {sweep.parent_run_id} has no {metric} for {len(untested)} of its runs (the "
                "one-sample problem has no test set): compare --metric final_loss"
            )
        by = by or ("target" if metric == "final_loss" else "final_loss")
        try:
            rows = report.summarize(report.as_metric(sweep.runs, metric), target, by, baseline)
        except ValueError as error:
            raise BadInput(str(error)) from None
        rows = report.sort_rows(rows, sort or "rank")
        text = report.render_compare(
            rows, output_format, report.compare_title(sweep, metric), report.compare_caption(rows, by, target), target
        )
    click.echo(text, nl=False)
    note_stopped_cells(sweep)
    warn_missing_cells(sweep)


def _baseline(vs: str | None) -> tuple[str, float] | None:
    from tinytrain.reports import compare as report

    try:
        return report.parse_cell(vs) if vs else None
    except ValueError as error:
        raise BadInput(str(error)) from None


@click.command()
@experiment_option
@sweep_option
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, writable=True),
    default="loss-curves.png",
    show_default=True,
    help="The PNG file to write.",
)
@tracking_uri_option
@translate_errors
def plot(experiment_name, sweep_id, out, tracking_uri):
    """Plot a sweep's loss curves to a PNG: a panel per optimizer, a line per lr (log scale).

    Each line is the median over seeds, with a band from the lowest to the highest seed; diverged seeds
    are left out and named in the legend.

    \b
    Example:
        tinytrain plot --out docs/loss-curves.png
        tinytrain plot --experiment one-step-adam --sweep 3f2a9c... --out one-step.png
    """
    from tinytrain.reports import plot as curves
    from tinytrain.tracking import read_sweep

    sweep = read_sweep(resolved_uri(tracking_uri), experiment_name, sweep_id, with_losses=True)
    if not sweep.runs:
        raise click.ClickException(f"sweep {sweep.parent_run_id} has no finished run to plot yet")
    figure = curves.plot_loss_curves(sweep)
    path = curves.save_figure(figure, out)
    lines = sum(len(ax.lines) for ax in figure.axes)
    click.echo(
        f"Wrote {path}: {len(figure.axes)} panel(s), {lines} line(s), sweep {sweep.parent_run_id} of {sweep.experiment}"
    )
    warn_missing_cells(sweep)
