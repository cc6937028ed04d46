"""The commands that start services: `ui` (the MLflow UI or server on a store), `server` (a team's MLflow server on
PostgreSQL) and `cluster` (Dask)."""

from __future__ import annotations

import sys

import click

from tinytrain import api
from tinytrain.cli.common import resolved_uri, tracking_uri_option, translate_errors


def exposure_options(command):
    """--host, --allowed-hosts and --basic-auth: what a server needs to be reached from other machines."""
    command = click.option(
        "--basic-auth",
        is_flag=True,
        help="MLflow's basic auth (--app-name basic-auth): every request needs a user and password "
        "(clients set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD).",
    )(command)
    command = click.option(
        "--allowed-hosts",
        metavar="HOST[:PORT],...",
        default=None,
        help="The Host headers other machines send (MLflow's DNS-rebinding check); required off loopback.",
    )(command)
    return click.option(
        "--host", default="127.0.0.1", show_default=True, help="Keep it on loopback unless you mean it."
    )(command)


def check_exposure(host: str, allowed_hosts: str | None, basic_auth: bool) -> None:
    """Refuse a server that other machines could not use; warn of one they could use without logging in."""
    import os
    import secrets

    warning = api.exposure_warning(host, allowed_hosts, basic_auth)
    if warning:
        click.echo(warning, err=True)
    if basic_auth:
        # the auth app signs its forms with it; one made up per start is enough for API clients (the
        # environment of the server, made after this)
        os.environ.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))


@click.command()
@tracking_uri_option
@click.option("--port", type=int, default=5000, show_default=True)
@exposure_options
@translate_errors
def ui(tracking_uri, port, host, allowed_hosts, basic_auth):
    """The MLflow UI on the project's store (runs, nested sweeps, loss curves, checkpoints).

    \b
    Example:
        tinytrain ui --port 5000   # then open the links it prints: each experiment's latest sweep
    """
    import os

    store = api.open_store(resolved_uri(tracking_uri))
    check_exposure(host, allowed_hosts, basic_auth)
    command, env = store.server_command(host, port, allowed_hosts, basic_auth)
    address = api.ui_address(host, port)
    click.echo(f"MLflow UI on {store.uri} at {address} (it takes a few seconds to start; Ctrl-C stops it)")
    for sweep in api.latest_sweeps(store.uri):
        if sweep.has_views:
            click.echo(f"  {sweep.name}, its latest sweep (run {sweep.parent_run_id}):")
            click.echo("\n".join(api.sweep_links(address, sweep.experiment_id, sweep.parent_run_id).lines()))
        else:
            click.echo(f"  {sweep.name}: {store.runs_page(sweep.experiment_id, address)}")
    sys.stdout.flush()
    os.execve(command[0], command, env)


@click.command()
@click.argument("database_url", envvar="TINYTRAIN_DATABASE_URL", metavar="DATABASE_URL")
@click.option(
    "--artifacts",
    default="mlartifacts",
    show_default=True,
    metavar="FOLDER|URI",
    help="Where the runs' artifacts (checkpoints, summaries) go.",
)
@click.option(
    "--serve-artifacts/--no-serve-artifacts",
    default=True,
    show_default=True,
    help="Clients send artifacts through the server; with --no-serve-artifacts each client writes them into "
    "--artifacts itself (a folder every machine mounts at the same path).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@exposure_options
@translate_errors
def server(database_url, artifacts, serve_artifacts, port, host, allowed_hosts, basic_auth):
    """A team's MLflow server on a database (PostgreSQL): creates or upgrades its schema, then serves it.

    Every machine then sweeps into it with --tracking-uri http://HOST:PORT; sweeps of one experiment share
    its grid. PostgreSQL needs the postgres extra (pip install -e '.[postgres]'). DATABASE_URL may also
    come from TINYTRAIN_DATABASE_URL (keeps the password off the command line).

    \b
    Example:
        tinytrain server postgresql+psycopg://mlflow:SECRET@db-host:5432/mlflow --port 5000
        tinytrain server "$DB" --host 0.0.0.0 --allowed-hosts 'team-server,team-server:5000' --basic-auth
    """
    import os
    import subprocess

    check_exposure(host, allowed_hosts, basic_auth)
    upgrade, command, env = api.database_server_commands(
        database_url, artifacts, serve_artifacts, host, port, allowed_hosts, basic_auth
    )
    shown = _without_password(database_url)
    click.echo(f"Creating or upgrading the MLflow schema in {shown} ...")
    done = subprocess.run(upgrade, env=env, capture_output=True, text=True)
    if done.returncode:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        raise click.ClickException(f"mlflow db upgrade failed on {shown}: {reason}")
    click.echo(f"MLflow server on {shown} at http://{host}:{port} (it takes a few seconds to start; Ctrl-C stops it)")
    click.echo(f"Sweep into it: tinytrain sweep --tracking-uri http://{host}:{port}")
    sys.stdout.flush()
    os.execve(command[0], command, env)


def _without_password(url: str) -> str:
    """A database URL as it may be printed: user, no password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


@click.command()
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8786, show_default=True, help="The scheduler's port on 127.0.0.1."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Worker processes, one thread each (one run at a time each).",
)
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
    folder = api.CLUSTER_FOLDER
    if stop:
        found = folder.exists()
        stopped = api.stop_cluster()
        if stopped:
            click.echo(f"Stopped the Dask cluster ({stopped} process(es)); removed {folder}/.")
        else:
            click.echo(
                "No Dask cluster running from this folder"
                + (f"; removed what was left in {folder}/." if found else f" (no {folder}/).")
            )
        return
    state = api.start_cluster(port, workers)
    click.echo(f"Dask scheduler at {state.address} with {state.workers} worker(s), one thread each (logs in {folder}/)")
    click.echo(f"Use it:  tinytrain sweep --executor dask --scheduler {state.address}")
    click.echo("Stop it: tinytrain cluster --stop   (or make cluster-stop)")
