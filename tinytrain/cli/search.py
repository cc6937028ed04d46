"""`tinytrain search`: Optuna chooses the cells to train (tinytrain/search.py)."""

from __future__ import annotations

import sys

import click

from tinytrain import api
from tinytrain.cli.common import ExitCode, resolved_uri, tracking_uri_option, translate_errors


@click.command()
@click.argument("file", required=False, metavar="[FILE]")
@click.option(
    "--space",
    "space",
    multiple=True,
    metavar="NAME=LOW:HIGH[:log]",
    help="A searched value (repeatable): lr, a numeric setting or optimizers.NAME.HYPERPARAMETER.",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=V", help="Override a setting, as for sweep.")
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True, help="Finished trials to reach.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, help="Stop after SECONDS.")
@click.option("--sampler", type=click.Choice(("tpe", "gp", "qmc")), default="tpe", show_default=True)
@click.option("--sampler-seed", type=int, default=0, show_default=True, help="The same seed, the same trials.")
@click.option(
    "--pruner",
    type=click.Choice(("none", "halving", "seeds")),
    default="none",
    show_default=True,
    help="halving: stop trials at rungs of steps; seeds: train a trial's seeds one by one, stop it at rungs of seeds.",
)
@click.option(
    "--runs",
    "runs",
    type=click.IntRange(min=1),
    default=None,
    help="A budget of runs: start no trial or seed that would take the study past N runs.",
)
@click.option("--storage", default=None, metavar="URL", help="Optuna's storage [default: optuna.db beside mlflow.db].")
@click.option("--study", "study_name", default=None, help="The study's name [default: <experiment>-search].")
@tracking_uri_option
@translate_errors
def search(
    file, space, overrides, trials, timeout, sampler, sampler_seed, pruner, runs, storage, study_name, tracking_uri
):
    """Search the learning rate and any numeric hyperparameter or setting with Optuna; each trial is a
    cell trained over the experiment's seeds and logged as a sweep of its own. Run it again to resume.
    Without --space it searches the grid's own cells (each axis with more than one value, seeds aside).

    \b
    Example:
        tinytrain search experiments/optimizer-grid.toml --pruner seeds --runs 15
        tinytrain search --space lr=1e-4:1:log --set optimizer=adam --trials 30
        tinytrain search --space lr=1e-3:0.3:log --space optimizers.sgd-momentum.momentum=0.5:0.99 --pruner halving
    """
    uri = resolved_uri(tracking_uri)
    experiment = api.load_experiment(file, list(overrides))
    dimensions = api.search_space(space, experiment)
    outcome = api.run_search(
        experiment,
        uri,
        dimensions,
        trials=trials,
        timeout=timeout,
        sampler=sampler,
        seed=sampler_seed,
        storage=storage,
        study_name=study_name,
        pruner=pruner,
        overrides=tuple(overrides),
        runs=runs,
    )
    states = {state: sum(t.state == state for t in outcome.trials) for state in ("COMPLETE", "PRUNED", "FAIL")}
    click.echo(
        f"Study {outcome.study} ({outcome.storage}): {len(outcome.trials)} trial(s): {states['COMPLETE']} complete, "
        f"{states['PRUNED']} pruned, {states['FAIL']} failed; this time {outcome.runs} runs logged, "
        f"{outcome.steps_trained:,} steps trained, {outcome.seconds:.1f} s"
    )
    budget = f" of a budget of {outcome.runs_budget}" if outcome.runs_budget is not None else ""
    click.echo(f"Runs started by the study: {outcome.study_runs}{budget}")
    if outcome.best is not None:
        params = ", ".join(
            f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
            for name, value in outcome.best.params.items()
        )
        click.echo(
            f"Best: trial {outcome.best.number} ({params}): {outcome.best.value:.4g} (sweep run {outcome.best.sweep})"
        )
    for failure in outcome.failures:
        click.echo(f"failed: {failure}", err=True)
    if outcome.failures:
        sys.exit(ExitCode.FAILED)
