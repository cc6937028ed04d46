"""The commands of trust and of the catalogue: reproduce a logged run, check the gradients, list the optimizers.

Like the rest of the CLI they import neither torch nor MLflow at module level.
"""

from __future__ import annotations

import sys

import click

from tinytrain import api
from tinytrain.cli.common import BadInput, ExitCode, resolved_uri, tracking_uri_option, translate_errors


@click.command()
@click.argument("run_id")
@tracking_uri_option
@translate_errors
def reproduce(run_id, tracking_uri):
    """Retrain a logged run from its MLflow record alone and check everything the record claims.

    Every logged metric but the wall time (train_seconds), the outcome, every checkpoint and LoggedModel
    the run's settings imply, bit for bit, and that its params still give its run key. Exits 0 when all
    is identical, 1 with one line naming the first difference.

    \b
    Example:
        tinytrain reproduce 3f2a9c...   # a run id from the UI or `tinytrain compare`
    """
    verdict = api.open_store(resolved_uri(tracking_uri)).reproduce(run_id)
    for note in verdict.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(verdict.describe())
    sys.exit(ExitCode.OK if verdict.identical else ExitCode.FAILED)


@click.command()
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the net's initial weights.")
@click.option(
    "--entries",
    default="200",
    show_default=True,
    metavar="N|all",
    help="Entries checked per parameter tensor (a fixed random sample), or all (about a minute).",
)
@click.option("--tolerance", type=float, default=1e-4, show_default=True, help="Largest relative error that passes.")
@click.option(
    "--problem",
    default=api.DEFAULTS["problem"],
    show_default=True,
    metavar="NAME",
    help="Whose data: one-sample (its input), digits (the first training images), or a plugin problem (an "
    "entry-point name or package.module:Class: its fixed_batch() at its default settings, its own net if any).",
)
@click.option("--loss", type=click.Choice(api.LOSSES), default=api.DEFAULTS["loss"], show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(1, api.DIGITS_TRAINING_IMAGES),
    default=16,
    show_default=True,
    help="Images in the digits minibatch.",
)
@translate_errors
def gradcheck(seed, entries, tolerance, problem, loss, batch_size):
    """Check autograd's gradients of the net and loss against central finite differences in float64.

    Prints the largest relative error per parameter tensor; exits 0 when all pass, 1 otherwise.

    \b
    Example:
        tinytrain gradcheck --entries all
        tinytrain gradcheck --problem digits --loss cross_entropy --batch-size 8
    """
    if entries != "all" and not (entries.isdigit() and int(entries) > 0):
        raise BadInput(f"--entries must be a positive number or all, got {entries!r}")
    from rich.console import Console
    from rich.table import Table

    checks = api.check_gradients(
        seed=seed,
        entries_per_tensor=None if entries == "all" else int(entries),
        problem=problem,
        loss=loss,
        batch_size=batch_size,
    )
    data = f"{problem}, {loss}" + (
        f", a fixed batch of {batch_size} training images" if problem != "one-sample" else ""
    )
    table = Table(
        "tensor",
        "entries",
        "max relative error",
        "max absolute error",
        "verdict",
        title=f"autograd vs central differences (float64, seed {seed})",
        caption=f"data: {data}",
    )
    for check in checks:
        table.add_row(
            check.name,
            str(check.entries),
            f"{check.max_relative_error:.2e}",
            f"{check.max_absolute_error:.2e}",
            "ok" if check.passed(tolerance) else "FAIL",
        )
    Console(width=100).print(table)
    failed = [check.name for check in checks if not check.passed(tolerance)]
    click.echo(
        f"gradcheck failed for {', '.join(failed)} (tolerance {tolerance:g})"
        if failed
        else f"gradcheck passed: every tensor within {tolerance:g}"
    )
    sys.exit(ExitCode.FAILED if failed else ExitCode.OK)


@click.command()
def optimizers():
    """List the optimizers an experiment can name, with their default lr and hyperparameters.

    A variant fixes some of them: [optimizers.NAME] type = "sgd", momentum = 0.9 (docs/experiment-files.md, Variants).
    Installed plugins (entry points of tinytrain.optimizers) are listed last; any torch.optim.Optimizer
    subclass can also be a variant's type as "package.module:Class" (docs/plugins.md).

    \b
    Example:
        tinytrain optimizers
    """
    for name, (class_path, default_lr, defaults) in api.OPTIMIZERS.items():
        source = (
            class_path.replace("pytorch_optimizer.", "pytorch-optimizer ")
            if "." in class_path
            else f"torch.optim.{class_path}"
        )
        click.echo(f"{name:<19} {source:<37} lr={default_lr:g}")
        click.echo("    " + ", ".join(f"{key}={value}" for key, value in defaults.items()))
    click.echo(
        f"muon trains {', '.join(api.MUON_PARAMETERS)} and its AdamW (adamw_*) the other "
        f"{len(api.ADAMW_WITH_MUON)} tensors."
    )
    for name, path in sorted(api.entry_points(api.OPTIMIZER_GROUP).items()):  # from metadata: nothing imported
        click.echo(f"{name:<19} {path} (plugin, entry point of {api.OPTIMIZER_GROUP})")
