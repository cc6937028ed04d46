"""Where the store is: URIs, the check that it can be used, the UI's runs page and the `mlflow server` command.

No MLflow import here: the CLI resolves URIs and prints links without loading it.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tinytrain.tracking.contract import CELL_SUMMARY, KIND, PARENT, RUN_NAME_TAG, TrackingError

DEFAULT_STORE = Path("mlruns") / "mlflow.db"
# MLflow 3 sends usage telemetry from every process that imports it; a research tool should not phone home.
# Set in the environment of the processes that use MLflow: the store's (Store) and the server's.
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true"}
# What a process that opens a store sets before MLflow is imported: no telemetry, and no progress bar for the
# few files it downloads (MLflow draws one wherever tqdm is installed, as optuna, the search extra, brings it)
QUIET = {**NO_TELEMETRY, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def resolve_tracking_uri(uri: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the embedded store mlruns/mlflow.db of this folder.

    A plain path is taken as a SQLite file. SQLite URIs are made absolute so that every process that gets
    the URI (workers, the UI) opens the same file whatever its working directory.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or str(DEFAULT_STORE)
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
    elif "://" in uri:
        raise TrackingError(
            f"tracking URI '{uri}' is not supported: use a SQLite file (sqlite:///path/mlflow.db "
            "or a path) or an mlflow server (http://127.0.0.1:5000)"
        )
    else:
        path = Path(uri)
    return f"sqlite:///{path.expanduser().resolve()}"


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def sqlite_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///"))


def artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store go to artifacts/ beside the database; a server decides its own."""
    if is_http(uri):
        return None
    return (sqlite_path(uri).parent / "artifacts").as_uri()


def state_folder(uri: str) -> Path:
    """Where runs keep the training states they continue from (engines/state.py): states/ beside a SQLite
    store's database; for any other store a folder of this machine's cache named after the store's URI."""
    if uri.startswith("sqlite:///"):
        return sqlite_path(uri).parent / "states"
    import hashlib

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tinytrain" / "states" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def check_store(uri: str, timeout: float = 3.0) -> None:
    """Fail fast, with one line, when the store cannot be used; before any run starts."""
    if is_http(uri):
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as response:
                if response.status != 200:
                    raise TrackingError(f"the tracking server at {uri} answered {response.status} on /health")
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise TrackingError(
                f"cannot reach the tracking server at {uri} ({reason}): start it with "
                "`make server` or fix --tracking-uri"
            ) from None
        return
    folder = sqlite_path(uri).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrackingError(f"cannot create the store folder {folder}: {error.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise TrackingError(f"the store folder {folder} is not writable: fix its permissions or use --tracking-uri")


RUN_NAME_ORDER = f"tags.`{RUN_NAME_TAG}`"  # how the UI names its run-name sort
DEFAULT_UI_ADDRESS = "http://127.0.0.1:5000"  # where `tinytrain ui` (and `make ui`) serve by default


def runs_page_url(
    uri: str,
    experiment_id: str,
    ui_address: str = DEFAULT_UI_ADDRESS,
    search: str | None = None,
    charts: bool = False,
    order_by: str = RUN_NAME_ORDER,
) -> str:
    """The runs page of an experiment in the UI's Model training view (it opens on a GenAI page otherwise).

    With `search` (an MLflow filter) the page shows the matching runs, ordered by `order_by` (run name): the
    3.17 UI nests child runs under their parent only when the runs are unfiltered or ordered by start time,
    so these come as one row each, not as one collapsed parent. `charts` opens its chart view (which draws
    the first ten rows) instead of the table.
    """
    from urllib.parse import quote, urlencode

    base = uri if is_http(uri) else ui_address
    query = {"workflowType": "machine_learning"}
    if charts:
        query["compareRunsMode"] = "CHART"
    if search:
        query |= {"searchFilter": search, "orderByKey": order_by, "orderByAsc": "true"}
    return f"{base}/#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"


def sweep_search(parent_run_id: str, cells_only: bool = False) -> str:
    """The MLflow filter of a sweep's runs (its cells' runs and summaries), or of its cell summaries only."""
    search = f"tags.`{PARENT}` = '{parent_run_id}'"
    return search + f" and tags.`{KIND}` = '{CELL_SUMMARY}'" if cells_only else search


def ui_address(host: str = "127.0.0.1", port: int = 5000) -> str:
    """The address a browser opens for a UI served on host:port (all interfaces: this machine's name)."""
    if host in ("0.0.0.0", "::"):
        import socket

        host = socket.getfqdn()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def ui_command(uri: str) -> str | None:
    """The command that serves a SQLite store's UI at DEFAULT_UI_ADDRESS (None for a server: it is one).

    Plain `tinytrain ui` where that opens this store (the default store, or MLFLOW_TRACKING_URI), else with
    --tracking-uri: `make ui` serves mlruns/ only.
    """
    if is_http(uri):
        return None
    if resolve_tracking_uri(None) == uri:
        return "tinytrain ui"
    import shlex

    return f"tinytrain ui --tracking-uri {shlex.quote(uri)}"


def server_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> tuple[list[str], dict[str, str]]:
    """`mlflow server` on a SQLite store, its artifacts served through it; and the environment it needs.

    One web worker and no job consumers: tinytrain needs neither, and on two cores they slow all else.
    """
    if is_http(uri):
        raise TrackingError(f"{uri} is already a server: open {uri} in a browser")
    artifacts = sqlite_path(uri).parent / "artifacts"
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        uri,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts.as_uri(),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**NO_TELEMETRY, **os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return command, env
