"""What every command module shares: exit codes, the one-line errors at the edge, the store option.

The library raises its own errors; only the CLI turns them into one-line messages and exit codes (ExitCode).
"""

from __future__ import annotations

import functools
from enum import IntEnum

import click

from tinytrain.api import ConfigError, ExecutorError, TrackingError


class ExitCode(IntEnum):
    """How a tinytrain command ends."""

    OK = 0
    FAILED = 1  # runs failed, a store or cluster cannot be used, a run does not reproduce, a gradient check fails
    BAD_INPUT = 2  # nothing was written (click's own usage errors exit 2 too)
    INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class BadInput(click.ClickException):
    """Bad input: one line, exit code 2."""

    exit_code = ExitCode.BAD_INPUT


def translate_errors(command):
    """Library errors -> one-line click errors; nothing else reaches the user as a traceback.

    A tracking server that fails under MLflow's own client (401, 403, 404, 5xx, refused, timed out) is one
    line too, naming the cause and the fix (tracking.location.server_failure).
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ConfigError as error:
            raise BadInput(str(error)) from None
        except (TrackingError, ExecutorError) as error:
            raise click.ClickException(str(error)) from None
        except Exception as error:
            from tinytrain import api

            line = api.server_failure(error, _server_uri(kwargs.get("tracking_uri")))
            if line is None:
                raise
            raise click.ClickException(line) from None

    return wrapper


def _server_uri(tracking_uri: str | None) -> str | None:
    import os

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri.rstrip("/") if uri and uri.startswith(("http://", "https://")) else None


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


def until_separated_options(until_help: str, max_seeds_help: str):
    """`--until-separated` and the `--max-seeds N` that bounds it, as `sweep` and `confirm` take them (each
    command says what a round adds and where it stops); check_max_seeds refuses the bound alone."""

    def decorate(command):
        command = click.option(
            "--max-seeds", type=click.IntRange(min=1), default=None, metavar="N", help=max_seeds_help
        )(command)
        return click.option("--until-separated", is_flag=True, help=until_help)(command)

    return decorate


def check_max_seeds(max_seeds: int | None, until_separated: bool) -> None:
    if max_seeds is not None and not until_separated:
        raise BadInput("--max-seeds bounds --until-separated: add --until-separated, or drop --max-seeds")
