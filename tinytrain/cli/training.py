"""The commands that train: `sweep` (a grid, resumable) and `run` (one cell, no parent sweep)."""

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
    type=click.Choice(api.EXECUTORS),
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
    type=click.Choice(api.ENGINES),
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
@until_separated_options(
    "Then add seeds to the cells tied with the best and sweep them, until none is tied.",
    "With --until-separated: stop when the tied cells have N seeds [default: 10].",
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
    type=click.Choice(api.BUDGETS),
    default=None,
    help="halving: successive halving; every cell starts, the best 1/eta continue at each rung (docs/budget.md).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option(
    "--allow-huge", is_flag=True, help="Sweep a grid of more than a million cells (refused otherwise, as a typo)."
)
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
    allow_huge,
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
    check_max_seeds(max_seeds, until_separated)
    if prune_p is not None and not until_separated:
        raise BadInput("--prune-p prunes the seeds of --until-separated: add --until-separated, or drop --prune-p")
    if until_separated and (dry_run or force):
        raise BadInput("--until-separated picks its seeds from the results: drop --dry-run and --force")
    overrides = list(overrides) + ([f"engine={engine}"] if engine else []) + ([f"budget={budget}"] if budget else [])
    uri = resolved_uri(tracking_uri)
    experiment = experiment_of(file, from_run, overrides, uri, allow_huge)
    if experiment.settings["budget"] == "halving" and (until_separated or force):
        raise BadInput("--budget halving decides which runs go on: drop --until-separated and --force")
    if dry_run:
        show_plan(experiment, uri, force)
        return
    if scheduler and executor not in (None, "dask"):
        raise BadInput(f"--scheduler names a Dask scheduler: use it with --executor dask, not {executor}")
    executor = executor or ("dask" if scheduler else None)  # --scheduler alone means the Dask executor
    options = {"executor": executor or "inprocess", "jobs": jobs, "scheduler": scheduler, "progress": not quiet}
    halving = None
    try:
        if experiment.settings["budget"] == "halving":
            halving = api.sweep_halving(experiment, uri, **options)
            outcome = halving.outcome
        elif until_separated:
            separation = api.sweep_until_separated(
                experiment, uri, max_seeds or 10, 0.1 if prune_p is None else prune_p, **options
            )
            outcome = separation.rounds[-1]
        else:
            outcome = api.run_sweep(experiment, uri, force=force, **options)
    except KeyboardInterrupt:  # before the first run: nothing to mark
        click.echo("Interrupted before any run started.", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    if outcome.interrupted:
        counts = outcome.counts
        click.echo(
            f"Interrupted: {counts.finished + counts.diverged} run(s) done, {counts.killed} marked "
            "KILLED; run the same command again to resume.",
            err=True,
        )
        sys.exit(ExitCode.INTERRUPTED)
    show_summary(outcome)
    if halving is not None:
        click.echo("\n".join(api.halving_lines(halving)))
    if until_separated:
        show_separation(separation, max_seeds or 10)
    if outcome.counts.failed:
        sys.exit(ExitCode.FAILED)


def experiment_of(file: str | None, from_run: str | None, overrides: list[str], uri: str, allow_huge: bool = False):
    """The experiment of a FILE (or the default one), or the one a sweep's parent run keeps (--from-run)."""
    if not from_run:
        return api.load_experiment(file, overrides, allow_huge=allow_huge)
    if file:
        raise BadInput("give either FILE or --from-run, not both")
    return api.open_store(uri).sweep_experiment(from_run, overrides)


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
        which = "every other cell that trained" if separation.diverged else "every other cell"
        gone = len(separation.diverged)
        diverged = f"; {gone} cell(s) diverged in every seed" if gone else ""
        click.echo(
            f"Separated: {which} differs from the best ({separation.best}) at Holm-corrected "
            f"p < {api.COMPARE_ALPHA:g}{pruned} with up to {separation.seeds} seeds ({spent}){diverged}."
        )
    else:
        tied = ", ".join(separation.tied)
        click.echo(
            f"Not separated: {len(separation.tied)} cell(s) still cannot be told apart from the best "
            f"({separation.best}) with up to {separation.seeds} seeds (--max-seeds {max_seeds}; {spent}): "
            f"{tied}"
        )


def show_plan(experiment, uri: str, force: bool) -> None:
    cells = api.open_store(uri).plan(experiment)
    done = sum(cell.done_run_id is not None for cell in cells)
    lines = [f"drawn {line}\n" for line in experiment.drawn]
    for cell in cells:
        status = "done" if cell.done_run_id and not force else "run"
        spec = cell.spec
        arm = "".join(f"{axis}={value} " for axis, value in experiment.arm(spec))
        lines.append(
            f"{status:4}  {spec.optimizer:<14} lr={spec.lr:<8g} seed={spec.seed:<3} steps={spec.steps:<5} "
            f"{arm}key={spec.key}\n"
        )
    click.echo("".join(lines), nl=False)  # one write: 10,000 cells take one call, not 10,000
    to_run = len(cells) if force else len(cells) - done
    click.echo(
        f"{experiment.name}: {len(cells)} runs, {to_run} to run, {len(cells) - to_run} already done "
        "(dry run: nothing written)"
    )


def browse_line(outcome) -> str:
    """Where to see the runs in the UI: a sweep's prepared views (its charts, every run, its cell summaries)."""
    command = api.ui_command(outcome.uri)
    opening = f"`{command}`, then open" if command else "open"
    if outcome.links is None:
        return f"Browse: {opening} {outcome.runs_url}"
    return "\n".join([f"Browse: {opening}", *outcome.links.lines()])


def show_done(outcome) -> None:
    """A sweep whose cells were all done: it wrote nothing; the links of the sweeps that made them."""
    click.echo(
        f"{outcome.experiment.name}: every cell is done ({outcome.counts.total} runs in {outcome.uri}); "
        "nothing trained, nothing written (--force trains them again)."
    )
    if outcome.counts.recovered:
        click.echo(f"Marked FAILED {outcome.counts.recovered} run(s) left RUNNING by a killed sweep.")
    command = api.ui_command(outcome.uri)
    opening = f"`{command}`, then open" if command else "open"
    for parent in outcome.made_by.parents:
        if parent in outcome.made_by.with_views:
            click.echo(f"Made by sweep run {parent}; browse: {opening}")
            click.echo("\n".join(outcome.links_of(parent).lines()))
        else:  # a sweep logged before prepared views
            click.echo(f"Made by sweep run {parent}; browse: {opening} {outcome.runs_url_of(parent)}")


def show_summary(outcome) -> None:
    if outcome.made_by is not None:
        show_done(outcome)
        return
    counts = outcome.counts
    ran = counts.finished + counts.diverged + counts.failed + counts.stopped
    stopped = f", {counts.stopped} stopped by the budget" if counts.stopped else ""
    click.echo(
        f"{outcome.experiment.name}: {counts.total} runs: {ran} trained ({counts.finished} finished, "
        f"{counts.diverged} diverged, {counts.failed} failed{stopped}), {counts.skipped} already done, "
        + (f"{counts.others} trained by other sweeps meanwhile, " if counts.others else "")
        + f"in {outcome.seconds:.1f} s"
    )
    if counts.taken_over:
        click.echo(f"Took over {counts.taken_over} cell(s) whose sweep stopped renewing its claim (marked FAILED).")
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
    default=None,
    metavar="NAME",
    help=f"What the run learns: {', '.join(api.PROBLEMS)} or a plugin problem (an entry-point name or "
    "package.module:Class) [default: the experiment file's].",
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
    experiment = api.load_experiment(file, overrides)
    if lr is None:
        experiment = api.without_lr_axis(experiment)  # the optimizer's own default
    store = api.open_store(resolved_uri(tracking_uri))
    outcome = store.run_sweep(experiment, force=True, with_parent=False, progress=False)
    if outcome.interrupted:
        sys.exit(ExitCode.INTERRUPTED)
    (run_id,) = outcome.counts.run_ids.values()
    spec = experiment.specs()[0]
    if outcome.counts.failed:  # it raised: no loss to show, the error is the news (also in tinytrain.error)
        click.echo(f"{spec.run_name}: failed: {outcome.failures[0].partition(': ')[2]}; run {run_id}", err=True)
        sys.exit(ExitCode.FAILED)
    losses, accuracy = store.losses(run_id), store.run_metrics(run_id).get("final_test_accuracy")
    verdict = api.DIVERGED if outcome.counts.diverged else api.FINISHED
    tested = f", test accuracy {accuracy:.4g}" if accuracy is not None else ""
    click.echo(
        f"{spec.run_name}: loss {losses[0]:.6g} -> {losses[-1]:.6g} after {len(losses) - 1} step(s){tested}, "
        f"{verdict}; run {run_id}"
    )
    click.echo(browse_line(outcome))
