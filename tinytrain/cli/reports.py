"""The commands that read a sweep back: compare (the table over seeds) and plot (the loss curves)."""

from __future__ import annotations

import click

from tinytrain import api
from tinytrain.cli.common import BadInput, resolved_uri, tracking_uri_option, translate_errors

experiment_option = click.option(
    "--experiment",
    "experiment_name",
    metavar="NAME",
    default=None,
    help="The MLflow experiment [default: the store's latest sweep's, or the experiment of --sweep].",
)
sweep_option = click.option(
    "--sweep",
    "sweep_id",
    metavar="PARENT_RUN_ID",
    default=None,
    help="A sweep's parent run id [default: the experiment's latest sweep].",
)


def terminal_width() -> int | None:
    """The width a table must fit: $COLUMNS, else the terminal's; None in a pipe without $COLUMNS (unbounded)."""
    import os
    import shutil
    import sys

    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def note_stopped_cells(sweep) -> None:
    """Cells a budget stopped early (successive halving): left out of the table, named below it on stderr."""
    if sweep.stopped_note:
        click.echo(f"note: {sweep.stopped_note}", err=True)


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
    type=click.Choice(api.FORMATS),
    default="table",
    show_default=True,
    help="table for a terminal; markdown, csv and json for documents and scripts.",
)
@click.option(
    "--sort",
    metavar="COLUMN",
    default=None,
    help=f"Order the rows by this column, ascending [default: rank]: one of {', '.join(api.COMPARE_COLUMNS)}, "
    "or another axis of the grid (schedule, weight_decay, ...).",
)
@click.option(
    "--target",
    type=float,
    default=api.COMPARE_TARGET,
    show_default=True,
    metavar="LOSS",
    help="Time to target: the first step whose loss is at or below LOSS.",
)
@click.option(
    "--by",
    type=click.Choice(api.RANKINGS),
    default=None,
    help="Rank by the median steps to --target, or by the geometric mean of final_loss (of --metric) "
    "[default: target; final_loss with --metric].",
)
@click.option(
    "--metric",
    type=click.Choice(list(api.COMPARE_METRICS)),
    default="final_loss",
    show_default=True,
    help="What the statistics are of: final_loss (training), the test set's test_loss or test_accuracy, or the "
    "validation set's val_loss or val_accuracy (digits; an accuracy is compared as its error, 1 - accuracy, lower "
    "is better).",
)
@click.option(
    "--vs",
    "vs",
    metavar="OPTIMIZER@LR",
    default=None,
    help="The baseline of the paired comparison [default: the best-ranked cell], e.g. adam@0.001, or with the "
    "grid's other axes adam@0.001[schedule=cosine].",
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
    if before_after and (sort or vs):
        raise BadInput("--sort and --vs are for the compare table; --before-after lists the runs in grid order")
    api.check_compare_options(target, vs)  # bad options fail before the store is read
    store = api.open_store(resolved_uri(tracking_uri))
    sweep = store.sweep(experiment_name, sweep_id, with_curves=not before_after, with_params=False)
    if before_after:
        text = sweep.before_after_text(output_format)
    else:
        text = sweep.compare_text(output_format, target, by, metric, vs, sort or "rank", width=terminal_width())
    click.echo(text, nl=False)
    note_stopped_cells(sweep)
    warn_missing_cells(sweep)


PLOT_KINDS = api.PLOT_KINDS


@click.command()
@experiment_option
@sweep_option
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, writable=True),
    default="loss-curves.png",
    show_default=True,
    help="The file to write, in the format its suffix names: .png, .pdf, .svg, .eps, ... (any matplotlib writes).",
)
@click.option(
    "--dpi",
    type=click.FloatRange(min=10, max=2400),
    default=None,
    help="Resolution of raster formats (and raster parts of vector ones) [default: 120].",
)
@click.option(
    "--kind",
    type=click.Choice(PLOT_KINDS),
    default="curves",
    show_default=True,
    help="curves: loss per step; lr: each arm's tuning metric against lr; best-of-k: expected best after k trials.",
)
@tracking_uri_option
@translate_errors
def plot(experiment_name, sweep_id, out, dpi, kind, tracking_uri):
    """Plot a sweep: its loss curves (a panel per optimizer, a line per lr, log scale), or per arm the tuning
    metric against lr (--kind lr) or the expected best after k trials (--kind best-of-k).

    Each curve is the median over seeds, with a band from the lowest to the highest seed; diverged seeds
    are left out and named in the legend. The format follows the suffix of --out (pdf and svg for papers).

    \b
    Example:
        tinytrain plot --out docs/loss-curves.png
        tinytrain plot --kind lr --out lr.pdf
        tinytrain plot --experiment one-step-adam --sweep 3f2a9c... --out one-step.svg --dpi 300
    """
    api.check_figure_format(out)  # before the store is read
    store = api.open_store(resolved_uri(tracking_uri))
    sweep = store.sweep(experiment_name, sweep_id, with_curves=kind == "curves", with_params=False)
    figure = sweep.plot(out, kind=kind, dpi=dpi)
    lines = sum(len(ax.lines) for ax in figure.axes)
    click.echo(
        f"Wrote {out}: {len(figure.axes)} panel(s), {lines} line(s), sweep {sweep.sweep_id} of {sweep.experiment}"
    )
    warn_missing_cells(sweep)
