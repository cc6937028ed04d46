"""The tinytrain command line: a thin click layer over the library (`import tinytrain`).

Each module holds a family of commands: training.py (sweep, run), search.py (search), reports.py (compare,
plot), trust.py (reproduce, gradcheck, optimizers), verdict.py (verdict, confirm, profile, curves), services.py
(ui, server, cluster); common.py turns the library's errors into one-line messages and exit codes. Neither torch
nor MLflow (nor scipy) is imported at module level, so `tinytrain --help` is instant.
"""

from __future__ import annotations

from typing import NoReturn

import click

from tinytrain.cli.reports import compare, plot
from tinytrain.cli.search import search
from tinytrain.cli.services import cluster, server, ui
from tinytrain.cli.training import run, sweep
from tinytrain.cli.trust import gradcheck, optimizers, reproduce
from tinytrain.cli.verdict import confirm, curves, profile, verdict
from tinytrain.shutdown import exit_now


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tinytrain")
def cli() -> None:
    """See, measure and compare how optimizers train the PyTorch tutorial LeNet.

    \b
    Example:
        tinytrain sweep --set steps=10 --set optimizer=adam,sgd
        tinytrain compare
    """


COMMANDS = (
    sweep,
    run,
    search,
    compare,
    plot,
    verdict,
    confirm,
    profile,
    curves,
    reproduce,
    gradcheck,
    optimizers,
    ui,
    server,
    cluster,
)
for command in COMMANDS:
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
