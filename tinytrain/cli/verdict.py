"""The commands of a fair comparison: `verdict` (arms tuned on a sweep, and the verdict of a confirmation sweep),
`confirm` (the chosen settings on fresh seeds), `profile` (performance profiles across experiments) and `curves`
(the per-step curves as a file)."""

from __future__ import annotations

import sys

import click

from tinytrain import api
from tinytrain.cli.common import (
    BadInput,
    ExitCode,
    check_max_seeds,
    resolved_uri,
    tracking_uri_option,
    translate_errors,
    until_separated_options,
)
from tinytrain.cli.reports import experiment_option, sweep_option, terminal_width, warn_missing_cells

VERDICT_FORMATS = ("table", "markdown", "latex", "csv", "json")

format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(VERDICT_FORMATS),
    default="table",
    show_default=True,
    help="table for a terminal; markdown, latex (booktabs), csv and json for documents and scripts.",
)
tuning_metric_option = click.option(
    "--tune-on",
    "tuning_metric",
    metavar="METRIC",
    default=None,
    help="The metric each arm's setting is chosen on [default: final_val_loss, final_val_accuracy, else final_loss].",
)
metric_option = click.option(
    "--metric",
    metavar="METRIC",
    default=None,
    help="The reporting metric of the verdict [default: final_test_accuracy (as its error), final_test_loss, "
    "else final_loss].",
)


@click.command()
@experiment_option
@sweep_option
@format_option
@tuning_metric_option
@metric_option
@tracking_uri_option
@translate_errors
def verdict(experiment_name, sweep_id, output_format, tuning_metric, metric, tracking_uri):
    """Arms tuned fairly: per arm (an optimizer with its recipe) the setting chosen on the tuning metric, and,
    for a confirmation sweep (`tinytrain confirm`), the verdict on its fresh seeds.

    Per arm: the chosen lr, its median tuning metric, the share of its lrs whose median seed diverged, its lr
    sensitivity and the expected best after k trials. A confirmation sweep adds per arm the median [95% CI] of
    the reporting metric, a paired Wilcoxon test against the best arm (Holm over the arms), the probability
    that the best ends lower on a seed, and a sentence to quote.

    \b
    Example:
        tinytrain verdict
        tinytrain verdict --experiment digits-grid --format latex
    """
    report = api.verdict
    read_sweep = api.read_sweep

    uri = resolved_uri(tracking_uri)
    sweep = read_sweep(uri, experiment_name, sweep_id)
    tuning_sweep = read_sweep(uri, parent_run_id=sweep.confirms) if sweep.confirms else sweep
    width = terminal_width() if output_format == "table" else None
    tuning = report.tune(tuning_sweep, tuning_metric)
    if sweep.confirms is None or output_format == "table" or output_format == "markdown":
        click.echo(
            report.render_tuning(tuning, output_format, report.tuning_title(tuning, tuning_sweep), width), nl=False
        )
    if sweep.confirms is None:
        if output_format in ("table", "markdown"):
            click.echo(f"\nNext, on fresh seeds: tinytrain confirm --sweep {sweep.parent_run_id}")
        warn_missing_cells(sweep)
        return
    result = report.judge(sweep, metric)
    if output_format in ("table", "markdown"):
        click.echo()
    click.echo(report.render_verdict(result, output_format, report.verdict_title(result, sweep), width), nl=False)
    warn_missing_cells(sweep)


@click.command()
@experiment_option
@click.option(
    "--sweep",
    "sweep_id",
    metavar="PARENT_RUN_ID",
    default=None,
    help="The tuning sweep [default: the latest sweep, or the tuning sweep of the latest confirmation].",
)
@click.option(
    "--seeds",
    "count",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    metavar="N",
    help="Fresh seeds per arm (6 or more can separate two arms at p < 0.05).",
)
@click.option(
    "--first-seed",
    type=click.IntRange(min=0),
    default=None,
    metavar="S",
    help="The first fresh seed [default: one past the tuning sweep's largest seed]; tuning seeds are refused.",
)
@click.option(
    "--arm", "arms", multiple=True, metavar="NAME", help="Confirm only these arms (repeatable) [default: every arm]."
)
@tuning_metric_option
@metric_option
@until_separated_options(
    "Then add one seed to every arm and sweep again, until the best differs from every other arm.",
    "With --until-separated: stop at N seeds per arm [default: 20].",
)
@format_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@tracking_uri_option
@translate_errors
def confirm(
    experiment_name,
    sweep_id,
    count,
    first_seed,
    arms,
    tuning_metric,
    metric,
    until_separated,
    max_seeds,
    output_format,
    quiet,
    tracking_uri,
):
    """Run each arm's chosen setting on fresh seeds, as a sweep linked to the tuning sweep, and print the verdict.

    The setting of each arm is the one `tinytrain verdict` chooses on the tuning sweep (validation where the
    problem has it). The new sweep's parent run names the tuning sweep (tag tinytrain.confirms); its seeds
    never overlap the tuning seeds. Resumable: run the same command again to finish an interrupted one.

    \b
    Example:
        tinytrain confirm --seeds 10
        tinytrain confirm --sweep 3f2a9c... --seeds 8 --until-separated --max-seeds 16
        tinytrain confirm --arm adam --arm sgd-momentum --first-seed 100
    """
    check_max_seeds(max_seeds, until_separated)
    report = api.verdict
    run_confirmation = api.confirm
    read_sweep = api.read_sweep

    uri = resolved_uri(tracking_uri)
    try:
        confirmation = run_confirmation(
            uri,
            count,
            experiment=experiment_name,
            sweep_id=sweep_id,
            first_seed=first_seed,
            arms=list(arms) or None,
            tuning_metric=tuning_metric,
            metric=metric,
            until_separated=until_separated,
            max_seeds=max_seeds or 20,
            progress=not quiet,
        )
    except KeyboardInterrupt:
        click.echo("Interrupted before any run started.", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    outcome = confirmation.rounds[-1]
    if outcome.interrupted or confirmation.verdict is None:
        click.echo("Interrupted: run the same command again to resume.", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    width = terminal_width() if output_format == "table" else None
    if output_format in ("table", "markdown"):
        tuning = confirmation.tuning
        tuning_sweep = read_sweep(uri, parent_run_id=tuning.sweep)
        click.echo(report.render_tuning(tuning, output_format, report.tuning_title(tuning, tuning_sweep), width))
        counts = outcome.counts
        click.echo(
            f"Confirmation sweep {counts.parent_run_id}:\n{counts.total} runs ({counts.skipped} already done, "
            f"{counts.diverged} diverged, {counts.failed} failed) in {outcome.seconds:.1f} s\n"
        )
    record = read_sweep(uri, parent_run_id=outcome.counts.parent_run_id)
    result = confirmation.verdict
    click.echo(report.render_verdict(result, output_format, report.verdict_title(result, record), width), nl=False)
    if until_separated and output_format in ("table", "markdown"):
        state = "Separated" if result.separated else "Not separated"
        click.echo(f"\n{state} after {len(confirmation.rounds)} round(s), {len(confirmation.seeds)} seeds per arm.")
    if outcome.counts.failed:
        sys.exit(ExitCode.FAILED)


@click.command()
@click.option("--sweep", "sweep_ids", multiple=True, metavar="PARENT_RUN_ID", help="A sweep of the study (repeatable).")
@click.option(
    "--experiment",
    "experiments",
    multiple=True,
    metavar="NAME",
    help="An experiment of the study, by its latest sweep (repeatable) [default: the store's latest sweep].",
)
@click.option(
    "--target",
    "targets",
    type=float,
    multiple=True,
    metavar="LOSS",
    help="A target training loss (repeatable): each sweep and target is a problem [default: 0.001].",
)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also draw the profiles to this file.")
@click.option("--dpi", type=click.FloatRange(min=10, max=2400), default=None, help="Resolution of raster formats.")
@format_option
@tracking_uri_option
@translate_errors
def profile(sweep_ids, experiments, targets, out, dpi, output_format, tracking_uri):
    """Performance profiles and AlgoPerf's score per arm, across experiments and targets.

    An arm's time on a problem (a sweep and a target loss) is the median steps to the target of its fastest
    lr; the profile gives the share of problems it solves within tau times the fastest arm, and the score is
    the area under it up to tau = 4 (a missed target counts as infinite time).

    \b
    Example:
        tinytrain profile --experiment optimizer-grid --experiment digits-grid --target 0.01 --target 0.1
        tinytrain profile --sweep 3f2a9c... --sweep 81be07... --out profiles.pdf
    """
    import math

    figures = api.figures
    report = api.profiles
    read_sweep = api.read_sweep

    targets = targets or (1e-3,)
    bad = [target for target in targets if not (math.isfinite(target) and target > 0)]
    if bad:
        raise BadInput(f"--target must be a finite loss > 0, got {bad[0]!r}")
    if out is not None:
        try:
            figures.figure_format(out)
        except ValueError as error:
            raise BadInput(str(error)) from None
    uri = resolved_uri(tracking_uri)
    sweeps = [read_sweep(uri, parent_run_id=sweep_id, with_losses=True) for sweep_id in sweep_ids]
    sweeps += [read_sweep(uri, name, with_losses=True) for name in experiments]
    if not sweeps:
        sweeps = [read_sweep(uri, with_losses=True)]
    result = report.profiles(sweeps, targets)
    width = terminal_width() if output_format == "table" else None
    click.echo(report.render_profiles(result, output_format, width), nl=False)
    if out is not None:
        path = figures.save_figure(report.plot_profiles(result), out, dpi)
        click.echo(f"Wrote {path}", err=output_format not in ("table", "markdown"))


@click.command()
@experiment_option
@sweep_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default="curves.csv",
    show_default=True,
    help="The file: .csv, or .parquet (needs pyarrow).",
)
@tracking_uri_option
@translate_errors
def curves(experiment_name, sweep_id, out, tracking_uri):
    """Export a sweep's per-step curves as one long table: run_id, optimizer, lr, seed, outcome, metric,
    step, value (the loss at every step, and test_accuracy where the runs logged it).

    \b
    Example:
        tinytrain curves --out curves.csv
        tinytrain curves --experiment digits-grid --out digits.parquet
    """
    export = api.export
    read_sweep = api.read_sweep

    try:
        export.curve_format(out)
    except ValueError as error:
        raise BadInput(str(error)) from None
    sweep = read_sweep(resolved_uri(tracking_uri), experiment_name, sweep_id, with_losses=True)
    path, rows = export.write_curves(sweep, out)
    click.echo(f"Wrote {path}: {rows} rows, {len(sweep.runs)} runs of sweep {sweep.parent_run_id} ({sweep.experiment})")
    warn_missing_cells(sweep)
