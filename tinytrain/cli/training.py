"""The commands that train: `sweep` (a grid, resumable) and `run` (one cell, no parent sweep)."""

from __future__ import annotations

import sys

import click

from tinytrain.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_RUNS_FAILED,
    BadInput,
    resolved_uri,
    tracking_uri_option,
    translate_errors,
)
from tinytrain.executors.base import EXECUTORS
from tinytrain.spec import ENGINES, load_experiment
from tinytrain.spec.catalogue import PROBLEMS
from tinytrain.spec.settings import BUDGETS
from tinytrain.tracking.location import is_http


@click.command()
@click.argument("file", required=False, metavar="[FILE]")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=V1,V2",
    help="Override a setting or a grid axis (repeatable), e.g. --set steps=10 --set lr=0.1,0.01.",
)
@tracking_uri_option
@click.option("--dry-run", is_flag=True, help="List the runs, marking those already done; write nothing.")
@click.option("--force", is_flag=True, help="Run every cell again, even those already finished in the store.")
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes (with --executor pool or dask).",
)
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    default=None,
    help="Where runs execute [default: inprocess, or pool when --jobs > 1].",
)
@click.option(
    "--scheduler",
    metavar="tcp://HOST:PORT",
    default=None,
    help="A running Dask scheduler (with --executor dask); without it a local cluster is started.",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default=None,
    help="sequential: one run at a time; vmap: the cells in one batched net (one per --jobs worker).",
)
@click.option(
    "--from-run",
    "from_run",
    metavar="PARENT_RUN_ID",
    default=None,
    help="Re-run the sweep whose resolved experiment file a parent run keeps.",
)
@click.option(
    "--until-separated",
    is_flag=True,
    help="Then add seeds to the cells tied with the best and sweep them, until none is tied.",
)
@click.option(
    "--max-seeds",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="With --until-separated: stop when the tied cells have N seeds [default: 10].",
)
@click.option(
    "--prune-p",
    type=click.FloatRange(min=0, max=1),
    default=None,
    metavar="P",
    help="With --until-separated: a tied cell a one-sided paired test shows worse at p < P gets no more "
    "seeds [default: 0.1; 0: never].",
)
@click.option(
    "--budget",
    type=click.Choice(BUDGETS),
    default=None,
    help="halving: successive halving; every cell starts, the best 1/eta continue at each rung (docs/budget.md).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@translate_errors
def sweep(
    file,
    overrides,
    tracking_uri,
    dry_run,
    force,
    jobs,
    executor,
    scheduler,
    engine,
    from_run,
    until_separated,
    max_seeds,
    prune_p,
    budget,
    quiet,
):
    """Train every cell of an experiment's grid (default: experiments/optimizer-grid.toml) and log it.

    Cells already finished in the store are skipped, so an interrupted sweep resumes where it stopped.

    \b
    Example:
        tinytrain sweep experiments/one-step-adam.toml
        tinytrain sweep --set steps=10 --set lr=0.1,0.01 --set optimizer=adam --dry-run
        tinytrain sweep --until-separated --max-seeds 12
        tinytrain sweep --budget halving --set eta=3 --set first_rung=12
    """
    if max_seeds is not None and not until_separated:
        raise BadInput("--max-seeds bounds --until-separated: add --until-separated, or drop --max-seeds")
    if prune_p is not None and not until_separated:
        raise BadInput("--prune-p prunes the seeds of --until-separated: add --until-separated, or drop --prune-p")
    if until_separated and (dry_run or force):
        raise BadInput("--until-separated picks its seeds from the results: drop --dry-run and --force")
    overrides = list(overrides) + ([f"engine={engine}"] if engine else []) + ([f"budget={budget}"] if budget else [])
    uri = resolved_uri(tracking_uri)
    experiment = experiment_of(file, from_run, overrides, uri)
    if experiment.settings["budget"] == "halving" and (until_separated or force):
        raise BadInput("--budget halving decides which runs go on: drop --until-separated and --force")
    if dry_run:
        show_plan(experiment, uri, force)
        return
    if scheduler and executor not in (None, "dask"):
        raise BadInput(f"--scheduler names a Dask scheduler: use it with --executor dask, not {executor}")
    executor = executor or ("dask" if scheduler else None)  # --scheduler alone means the Dask executor
    from tinytrain.sweep import run_sweep, sweep_until_separated

    options = {"executor": executor or "inprocess", "jobs": jobs, "scheduler": scheduler, "progress": not quiet}
    halving = None
    try:
        if experiment.settings["budget"] == "halving":
            from tinytrain.budget import sweep_halving

            halving = sweep_halving(experiment, uri, **options)
            outcome = halving.outcome
        elif until_separated:
            separation = sweep_until_separated(
                experiment, uri, max_seeds or 10, 0.1 if prune_p is None else prune_p, **options
            )
            outcome = separation.rounds[-1]
        else:
            outcome = run_sweep(experiment, uri, force=force, **options)
    except KeyboardInterrupt:  # before the first run: nothing to mark
        click.echo("Interrupted before any run started.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if outcome.interrupted:
        counts = outcome.counts
        click.echo(
            f"Interrupted: {counts.finished + counts.diverged} run(s) done, {counts.killed} marked "
            "KILLED; run the same command again to resume.",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    show_summary(outcome)
    if halving is not None:
        from tinytrain.budget import halving_lines

        click.echo("\n".join(halving_lines(halving)))
    if until_separated:
        show_separation(separation, max_seeds or 10)
    if outcome.counts.failed:
        sys.exit(EXIT_RUNS_FAILED)


def experiment_of(file: str | None, from_run: str | None, overrides: list[str], uri: str):
    """The experiment of a FILE (or the default one), or the one a sweep's parent run keeps (--from-run)."""
    if not from_run:
        return load_experiment(file, overrides)
    if file:
        raise BadInput("give either FILE or --from-run, not both")
    from tinytrain.tracking import read_sweep_experiment

    return load_experiment(f"run {from_run}", overrides, text=read_sweep_experiment(uri, from_run), recorded=True)


def show_separation(separation, max_seeds: int) -> None:
    """What --until-separated did, after the summary of its last round."""
    rounds = len(separation.rounds)
    spent = (
        f"{rounds - 1} more round(s), {separation.added_runs} runs added, {separation.seconds:.1f} s in all"
        if rounds > 1
        else f"no seeds added, {separation.seconds:.1f} s"
    )
    for cell, reason in separation.dropped.items():
        click.echo(f"Dropped {cell}: no more seeds, {reason}.")
    if separation.separated:
        pruned = " or was dropped as worse" if separation.dropped else ""
        click.echo(
            f"Separated: every other cell differs from the best ({separation.best}) at Holm-corrected "
            f"p < 0.05{pruned} with up to {separation.seeds} seeds ({spent})."
        )
    else:
        tied = ", ".join(separation.tied)
        click.echo(
            f"Not separated: {len(separation.tied)} cell(s) still cannot be told apart from the best "
            f"({separation.best}) with up to {separation.seeds} seeds (--max-seeds {max_seeds}; {spent}): "
            f"{tied}"
        )


def show_plan(experiment, uri: str, force: bool) -> None:
    from tinytrain.sweep import plan

    cells = plan(experiment, uri)
    done = sum(cell.done_run_id is not None for cell in cells)
    lines = [f"drawn {line}\n" for line in experiment.drawn]
    for cell in cells:
        status = "done" if cell.done_run_id and not force else "run"
        spec = cell.spec
        lines.append(
            f"{status:4}  {spec.optimizer:<14} lr={spec.lr:<8g} seed={spec.seed:<3} steps={spec.steps:<5} "
            f"key={spec.key}\n"
        )
    click.echo("".join(lines), nl=False)  # one write: 10,000 cells take one call, not 10,000
    to_run = len(cells) if force else len(cells) - done
    click.echo(
        f"{experiment.name}: {len(cells)} runs, {to_run} to run, {len(cells) - to_run} already done "
        "(dry run: nothing written)"
    )


def browse_line(outcome) -> str:
    """Where to see the runs in the UI: a sweep's cells (charts), and every run of it, one row each."""
    opening = "open" if is_http(outcome.uri) else "`make ui`, then open"
    if outcome.cells_url is None:
        return f"Browse: {opening} {outcome.runs_url}"
    return f"Browse: {opening} {outcome.cells_url}\n  every run of this sweep: {outcome.runs_url}"


def show_summary(outcome) -> None:
    counts = outcome.counts
    ran = counts.finished + counts.diverged + counts.failed + counts.stopped
    stopped = f", {counts.stopped} stopped by the budget" if counts.stopped else ""
    click.echo(
        f"{outcome.experiment.name}: {counts.total} runs: {ran} trained ({counts.finished} finished, "
        f"{counts.diverged} diverged, {counts.failed} failed{stopped}), {counts.skipped} already done, "
        f"in {outcome.seconds:.1f} s"
    )
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


@click.command()
@click.option(
    "--optimizer",
    default="adam",
    show_default=True,
    help="A name of `tinytrain optimizers`, or a variant of the experiment file.",
)
@click.option("--lr", type=float, default=None, help="Learning rate [default: the optimizer's default].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=int, default=None, help="Optimizer steps [default: the experiment file's].")
@click.option(
    "--file",
    "file",
    default=None,
    metavar="FILE",
    help="Experiment file for the settings and variants [default: experiments/optimizer-grid.toml].",
)
@click.option(
    "--problem",
    type=click.Choice(list(PROBLEMS)),
    default=None,
    help="What the run learns [default: the experiment file's].",
)
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
    verdict = "diverged" if outcome.counts.diverged else "finished"
    tested = f", test accuracy {accuracy:.4g}" if accuracy is not None else ""
    click.echo(
        f"{spec.run_name}: loss {losses[0]:.6g} -> {losses[-1]:.6g} after {len(losses) - 1} step(s){tested}, "
        f"{verdict}; run {run_id}"
    )
    click.echo(browse_line(outcome))
