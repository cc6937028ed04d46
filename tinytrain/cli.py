"""The tinytrain command line: a thin click layer over spec, sweep, tracking and report.

The library raises its own errors; only this module turns them into one-line messages and exit codes
(2 for bad input, 1 for a store or cluster that cannot be used or runs that failed, 130 for Ctrl-C).
Neither torch nor MLflow is imported at module level, so `tinytrain --help` is instant.
"""

from __future__ import annotations

import math
import sys
from typing import NoReturn

import click

from tinytrain.cli_shared import (
    EXIT_INTERRUPTED,
    EXIT_RUNS_FAILED,
    BadInput,
    resolved_uri,
    tracking_uri_option,
    translate_errors,
)
from tinytrain.cli_trust import gradcheck, optimizers, reproduce
from tinytrain.executors.base import EXECUTORS
from tinytrain.problem_catalogue import PROBLEMS
from tinytrain.report import COLUMNS, FORMATS, METRICS
from tinytrain.shutdown import exit_now
from tinytrain.spec import ENGINES, load_experiment
from tinytrain.tracking.location import is_http


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tinytrain")
def cli() -> None:
    """See, measure and compare how optimizers train the PyTorch tutorial LeNet.

    \b
    Example:
        tinytrain sweep --set steps=10 --set optimizer=adam,sgd
        tinytrain compare
    """


@cli.command()
@click.argument("file", required=False, metavar="[FILE]")
@click.option("--set", "overrides", multiple=True, metavar="KEY=V1,V2",
              help="Override a setting or a grid axis (repeatable), e.g. --set steps=10 --set lr=0.1,0.01.")
@tracking_uri_option
@click.option("--dry-run", is_flag=True, help="List the runs, marking those already done; write nothing.")
@click.option("--force", is_flag=True, help="Run every cell again, even those already finished in the store.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (with --executor pool or dask).")
@click.option("--executor", type=click.Choice(EXECUTORS), default=None,
              help="Where runs execute [default: inprocess, or pool when --jobs > 1].")
@click.option("--scheduler", metavar="tcp://HOST:PORT", default=None,
              help="A running Dask scheduler (with --executor dask); without it a local cluster is started.")
@click.option("--engine", type=click.Choice(ENGINES), default=None,
              help="sequential: one run at a time; vmap: the cells in one batched net (one per --jobs worker).")
@click.option("--from-run", "from_run", metavar="PARENT_RUN_ID", default=None,
              help="Re-run the sweep whose resolved experiment file a parent run keeps.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@translate_errors
def sweep(file, overrides, tracking_uri, dry_run, force, jobs, executor, scheduler, engine, from_run, quiet):
    """Train every cell of an experiment's grid (default: experiments/optimizer-grid.toml) and log it.

    Cells already finished in the store are skipped, so an interrupted sweep resumes where it stopped.

    \b
    Example:
        tinytrain sweep experiments/one-step-adam.toml
        tinytrain sweep --set steps=10 --set lr=0.1,0.01 --set optimizer=adam --dry-run
    """
    overrides = list(overrides) + ([f"engine={engine}"] if engine else [])
    uri = resolved_uri(tracking_uri)
    if from_run:
        if file:
            raise BadInput("give either FILE or --from-run, not both")
        from tinytrain.tracking import read_sweep_experiment

        experiment = load_experiment(f"run {from_run}", overrides, text=read_sweep_experiment(uri, from_run))
    else:
        experiment = load_experiment(file, overrides)
    if dry_run:
        show_plan(experiment, uri, force)
        return
    if scheduler and executor not in (None, "dask"):
        raise BadInput(f"--scheduler names a Dask scheduler: use it with --executor dask, not {executor}")
    executor = executor or ("dask" if scheduler else None)  # --scheduler alone means the Dask executor
    from tinytrain.sweep import run_sweep

    try:
        outcome = run_sweep(experiment, uri, force=force, executor=executor or "inprocess", jobs=jobs,
                            scheduler=scheduler, progress=not quiet)
    except KeyboardInterrupt:  # before the first run: nothing to mark
        click.echo("Interrupted before any run started.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if outcome.interrupted:
        counts = outcome.counts
        click.echo(f"Interrupted: {counts.converged + counts.diverged} run(s) finished, {counts.killed} marked "
                   "KILLED; run the same command again to resume.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    show_summary(outcome)
    if outcome.counts.failed:
        sys.exit(EXIT_RUNS_FAILED)


def show_plan(experiment, uri: str, force: bool) -> None:
    from tinytrain.sweep import plan

    cells = plan(experiment, uri)
    done = sum(cell.done_run_id is not None for cell in cells)
    lines = [f"drawn {line}\n" for line in experiment.drawn]
    for cell in cells:
        status = "done" if cell.done_run_id and not force else "run"
        spec = cell.spec
        lines.append(f"{status:4}  {spec.optimizer:<14} lr={spec.lr:<8g} seed={spec.seed:<3} steps={spec.steps:<5} "
                     f"key={spec.key}\n")
    click.echo("".join(lines), nl=False)  # one write: 10,000 cells take one call, not 10,000
    to_run = len(cells) if force else len(cells) - done
    click.echo(f"{experiment.name}: {len(cells)} runs, {to_run} to run, {len(cells) - to_run} already done "
               "(dry run: nothing written)")


def browse_line(outcome) -> str:
    """Where to see the runs: the runs page (MLflow 3 opens experiments on a GenAI page otherwise)."""
    opening = "open" if is_http(outcome.uri) else "`make ui`, then open"
    return f"Browse: {opening} {outcome.runs_url}"


def show_summary(outcome) -> None:
    counts = outcome.counts
    ran = counts.converged + counts.diverged + counts.failed
    click.echo(f"{outcome.experiment.name}: {counts.total} runs: {ran} trained ({counts.converged} converged, "
               f"{counts.diverged} diverged, {counts.failed} failed), {counts.skipped} already done, "
               f"in {outcome.seconds:.1f} s")
    if outcome.engine_line():
        click.echo(outcome.engine_line())
    if counts.recovered:
        click.echo(f"Marked FAILED {counts.recovered} run(s) left RUNNING by a killed sweep; their cells ran again.")
    if counts.replaced:
        click.echo(f"Replaced {counts.replaced} earlier finished run(s) (--force; the old ones are soft-deleted).")
    for failure in outcome.failures:
        click.echo(f"failed: {failure}", err=True)
    parent = f" (sweep run {counts.parent_run_id})" if counts.parent_run_id else ""
    click.echo(f"Store: {outcome.uri}{parent}")
    click.echo(browse_line(outcome))


@cli.command()
@click.option("--optimizer", default="adam", show_default=True,
              help="A name of `tinytrain optimizers`, or a variant of the experiment file.")
@click.option("--lr", type=float, default=None, help="Learning rate [default: the optimizer's default].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=int, default=None, help="Optimizer steps [default: the experiment file's].")
@click.option("--file", "file", default=None, metavar="FILE",
              help="Experiment file for the settings and variants [default: experiments/optimizer-grid.toml].")
@click.option("--problem", type=click.Choice(list(PROBLEMS)), default=None,
              help="What the run learns [default: the experiment file's].")
@tracking_uri_option
@translate_errors
def run(optimizer, lr, seed, steps, file, problem, tracking_uri):
    """Train and log one run (no parent sweep); an earlier finished run of the same cell is replaced.

    \b
    Example (the blog's measurement):
        tinytrain run --optimizer adam --lr 1e-3 --seed 0 --steps 1
    """
    overrides = [f"optimizer={optimizer}", f"seed={seed}"]
    overrides += [f"lr={lr!r}"] if lr is not None else []
    overrides += [f"steps={steps}"] if steps is not None else []
    overrides += [f"problem={problem}"] if problem is not None else []
    experiment = load_experiment(file, overrides)
    if lr is None:
        experiment.grid.pop("lr", None)  # the optimizer's own default
    from tinytrain.sweep import run_sweep

    outcome = run_sweep(experiment, resolved_uri(tracking_uri), force=True, with_parent=False, progress=False)
    if outcome.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    (run_id,) = outcome.counts.run_ids.values()
    spec = experiment.specs()[0]
    if outcome.counts.failed:  # it raised: no loss to show, the error is the news (also in tinytrain.error)
        click.echo(f"{spec.run_name}: failed: {outcome.failures[0].partition(': ')[2]}; run {run_id}", err=True)
        sys.exit(EXIT_RUNS_FAILED)
    from tinytrain.tracking import Store

    with Store(outcome.uri) as store:
        losses, accuracy = store.losses(run_id), store.get_run(run_id).data.metrics.get("final_test_accuracy")
    verdict = "diverged" if outcome.counts.diverged else "converged"
    tested = f", test accuracy {accuracy:.4g}" if accuracy is not None else ""
    click.echo(f"{spec.run_name}: loss {losses[0]:.6g} -> {losses[-1]:.6g} after {len(losses) - 1} step(s){tested}, "
               f"{verdict}; run {run_id}")
    click.echo(browse_line(outcome))


@cli.command()
@tracking_uri_option
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Keep it on loopback unless you mean it.")
@translate_errors
def ui(tracking_uri, port, host):
    """The MLflow UI on the project's store (runs, nested sweeps, loss curves, checkpoints).

    \b
    Example:
        tinytrain ui --port 5000   # then open the runs page it prints
    """
    import os

    from tinytrain.tracking import experiments_readonly, runs_page_url, server_command

    uri = resolved_uri(tracking_uri)
    command, env = server_command(uri, host, port)
    address = f"http://{host}:{port}"
    click.echo(f"MLflow UI on {uri} at {address} (it takes a few seconds to start; Ctrl-C stops it)")
    for experiment_id, name in experiments_readonly(uri):
        click.echo(f"  {name}: {runs_page_url(uri, experiment_id, address)}")
    sys.stdout.flush()
    os.execve(command[0], command, env)


@cli.command()
@click.option("--port", type=click.IntRange(1, 65535), default=8786, show_default=True,
              help="The scheduler's port on 127.0.0.1.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Worker processes, one thread each (one run at a time each).")
@click.option("--stop", is_flag=True, help="Stop the cluster started from this folder, and clean up.")
@translate_errors
def cluster(port, workers, stop):
    """Start a local Dask scheduler and workers on 127.0.0.1 in the background (or --stop them).

    They keep running after this command returns (logs and state in .tinytrain-cluster/), so several
    sweeps can use them; each run trains on a worker and its result is logged by the sweep itself.

    \b
    Example:
        tinytrain cluster --port 8786 --workers 2
        tinytrain sweep --executor dask --scheduler tcp://127.0.0.1:8786
        tinytrain cluster --stop
    """
    from tinytrain.cluster import CLUSTER_FOLDER, start_cluster, stop_cluster

    if stop:
        found = CLUSTER_FOLDER.exists()
        stopped = stop_cluster(CLUSTER_FOLDER)
        if stopped:
            click.echo(f"Stopped the Dask cluster ({stopped} process(es)); removed {CLUSTER_FOLDER}/.")
        else:
            click.echo("No Dask cluster running from this folder" +
                       (f"; removed what was left in {CLUSTER_FOLDER}/." if found else f" (no {CLUSTER_FOLDER}/)."))
        return
    state = start_cluster(port, workers, CLUSTER_FOLDER)
    click.echo(f"Dask scheduler at {state.address} with {state.workers} worker(s), one thread each "
               f"(logs in {CLUSTER_FOLDER}/)")
    click.echo(f"Use it:  tinytrain sweep --executor dask --scheduler {state.address}")
    click.echo("Stop it: tinytrain cluster --stop   (or make cluster-stop)")


experiment_option = click.option(
    "--experiment", "experiment_name", metavar="NAME", default=None,
    help="The MLflow experiment [default: optimizer-grid, or the experiment of --sweep].",
)
sweep_option = click.option(
    "--sweep", "sweep_id", metavar="PARENT_RUN_ID", default=None,
    help="A sweep's parent run id [default: the experiment's latest sweep].",
)


def warn_missing_cells(sweep) -> None:
    """Cells of the sweep that no finished run answers for: say so, on stderr, below the data."""
    if sweep.missing:
        names = ", ".join(sweep.missing[:5]) + (", ..." if len(sweep.missing) > 5 else "")
        click.echo(f"note: {len(sweep.missing)} of {sweep.cells} cells have no finished run (failed, killed "
                   f"or not run yet: {names}); run the sweep again to fill them", err=True)


@cli.command()
@experiment_option
@sweep_option
@click.option("--format", "output_format", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table for a terminal; markdown, csv and json for documents and scripts.")
@click.option("--sort", type=click.Choice(COLUMNS), default=None,
              help="Order the rows by this column, ascending [default: rank, by the geometric mean].")
@click.option("--metric", type=click.Choice(list(METRICS)), default="final_loss", show_default=True,
              help="What the table compares: final_loss (training), or the test set's test_loss or "
                   "test_accuracy (digits; higher is better for accuracy).")
@click.option("--before-after", is_flag=True,
              help="Instead: initial_loss -> final_loss of each seed, and their mean (the one-step "
                   "measurement).")
@tracking_uri_option
@translate_errors
def compare(experiment_name, sweep_id, output_format, sort, metric, before_after, tracking_uri):
    """Compare the cells of a sweep over their seeds: one row per (optimizer, lr).

    Final losses span many decades, so besides mean ± std each row has the geometric mean and the spread
    (std) of log10(final_loss), and rows rank by the geometric mean. Diverged seeds are counted and left
    out of the statistics. Every cell of the sweep counts, also those it skipped because an earlier sweep
    had finished them.

    \b
    Example:
        tinytrain compare
        tinytrain compare --experiment one-step-adam --before-after
        tinytrain compare --sweep 3f2a9c... --format markdown --sort lr
        tinytrain compare --experiment digits-grid --metric test_accuracy
    """
    from tinytrain import report
    from tinytrain.tracking import read_sweep

    if before_after and sort:
        raise BadInput("--sort orders the compare table; --before-after lists the runs in grid order")
    sweep = read_sweep(resolved_uri(tracking_uri), experiment_name, sweep_id)
    if before_after:
        runs = report.before_after(sweep.runs)
        text = report.render_before_after(runs, output_format, report.before_after_title(sweep))
    else:
        untested = [run for run in sweep.runs if metric != "final_loss" and not run.diverged
                    and math.isnan(report.metric_value(run, metric))]
        if untested:
            raise BadInput(f"sweep {sweep.parent_run_id} has no {metric} for {len(untested)} of its runs (the "
                           "one-sample problem has no test set): compare --metric final_loss")
        rows = report.sort_rows(report.summarize(sweep.runs, metric), sort or "rank")
        text = report.render_compare(rows, output_format, report.compare_title(sweep, metric),
                                     report.compare_caption(metric), metric)
    click.echo(text, nl=False)
    warn_missing_cells(sweep)


@cli.command()
@experiment_option
@sweep_option
@click.option("--out", "out", type=click.Path(dir_okay=False, writable=True), default="loss-curves.png",
              show_default=True, help="The PNG file to write.")
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
    from tinytrain import report
    from tinytrain.tracking import read_sweep

    sweep = read_sweep(resolved_uri(tracking_uri), experiment_name, sweep_id, with_losses=True)
    if not sweep.runs:
        raise click.ClickException(f"sweep {sweep.parent_run_id} has no finished run to plot yet")
    figure = report.plot_loss_curves(sweep)
    path = report.save_figure(figure, out)
    lines = sum(len(ax.lines) for ax in figure.axes)
    click.echo(f"Wrote {path}: {len(figure.axes)} panel(s), {lines} line(s), sweep {sweep.parent_run_id} of "
               f"{sweep.experiment}")
    warn_missing_cells(sweep)


for command in (reproduce, gradcheck, optimizers):  # defined in cli_trust.py
    cli.add_command(command)


def main() -> NoReturn:
    """The `tinytrain` command: run it, then exit without the interpreter's teardown (see shutdown.py)."""
    try:
        cli.main(prog_name="tinytrain")  # standalone mode: it always ends with SystemExit
        code: int | str | None = 0
    except SystemExit as exit_:
        code = exit_.code
    exit_now(code)


if __name__ == "__main__":
    main()
