"""The commands that start services: `ui` (the MLflow UI or server on a store) and `cluster` (Dask)."""

from __future__ import annotations

import sys

import click

from tinytrain import api
from tinytrain.cli.common import resolved_uri, tracking_uri_option, translate_errors


@click.command()
@tracking_uri_option
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Keep it on loopback unless you mean it.")
@translate_errors
def ui(tracking_uri, port, host):
    """The MLflow UI on the project's store (runs, nested sweeps, loss curves, checkpoints).

    \b
    Example:
        tinytrain ui --port 5000   # then open the links it prints: each experiment's latest sweep
    """
    import os

    store = api.open_store(resolved_uri(tracking_uri))
    command, env = store.server_command(host, port)
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
