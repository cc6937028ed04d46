"""What every command module shares: exit codes, the one-line errors at the edge, the store option.

The library raises its own errors; only the CLI turns them into one-line messages and exit codes (2 for bad
input, 1 for a store or cluster that cannot be used or runs that failed, 130 for Ctrl-C).
"""

from __future__ import annotations

import functools

import click

from tinytrain.api import ConfigError, ExecutorError, TrackingError

EXIT_RUNS_FAILED = 1
EXIT_INTERRUPTED = 130


class BadInput(click.ClickException):
    """Bad input: one line, exit code 2."""

    exit_code = 2


def translate_errors(command):
    """Library errors -> one-line click errors; nothing else reaches the user as a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ConfigError as error:
            raise BadInput(str(error)) from None
        except (TrackingError, ExecutorError) as error:
            raise click.ClickException(str(error)) from None

    return wrapper


tracking_uri_option = click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    default=None,
    metavar="URI",
    help="The MLflow store: a SQLite file or http://HOST:PORT (default: mlruns/mlflow.db; env MLFLOW_TRACKING_URI).",
)


def resolved_uri(tracking_uri: str | None) -> str:
    from tinytrain.api import store_uri

    return store_uri(tracking_uri)
