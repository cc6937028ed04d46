"""Where the store is: URIs, the check that it can be used, the UI's runs page and the `mlflow server` command.

No MLflow import here: the CLI resolves URIs and prints links without loading it.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tinytrain.spec import ConfigError
from tinytrain.tracking.contract import CELL_SUMMARY, KIND, PARENT, RUN_NAME_TAG, TrackingError

DEFAULT_STORE = Path("mlruns") / "mlflow.db"
# MLflow 3 sends usage telemetry from every process that imports it; a research tool should not phone home.
# Set in the environment of the processes that use MLflow: the store's (Store) and the server's.
NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true"}
# MLflow's HTTP client retries a failed request 7 times with a backoff doubling from 2 s, each try waiting
# up to 120 s for an answer: a sweep whose server went away waited minutes without a word. Bounded here for
# tinytrain's processes (set in the environment before MLflow is imported; a user's own values win): a
# refused connection fails in about 4 s, a server that stopped answering in about 33 s.
HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
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


def rest_request(uri: str, path: str, body: dict | None = None) -> urllib.request.Request:
    """A request to a tracking server's REST API, with the credentials MLflow's client would send
    (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD for basic auth, or MLFLOW_TRACKING_TOKEN)."""
    import base64
    import json

    headers = {"Content-Type": "application/json"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    data = json.dumps(body).encode() if body is not None else None
    return urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}", data=data, headers=headers)


def state_folder(uri: str) -> Path:
    """Where runs keep the training states they continue from (engines/state.py): states/ beside a SQLite
    store's database; for any other store a folder of this machine's cache named after the store's URI."""
    if uri.startswith("sqlite:///"):
        return sqlite_path(uri).parent / "states"
    import hashlib

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tinytrain" / "states" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def check_store(uri: str, timeout: float = 3.0) -> None:
    """Fail fast, with one line, when the store cannot be used; before any run starts.

    A server is asked for its health, then for one experiment as this user: /health needs no login and
    passes MLflow's host check, so only the second finds a missing password or a host name not allowed.
    """
    if is_http(uri):
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as response:
                if response.status != 200:
                    raise TrackingError(http_status_line(uri, response.status))
            probe = rest_request(uri, "experiments/search", {"max_results": 1})
            with urllib.request.urlopen(probe, timeout=max(timeout, 10.0)):
                pass
        except urllib.error.HTTPError as error:
            raise TrackingError(http_status_line(uri, error.code)) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                raise TrackingError(timeout_line(f"the tracking server at {uri}")) from None
            raise TrackingError(unreachable_line(f"the tracking server at {uri}", str(reason))) from None
        return
    folder = sqlite_path(uri).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrackingError(f"cannot create the store folder {folder}: {error.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise TrackingError(f"the store folder {folder} is not writable: fix its permissions or use --tracking-uri")


def http_status_line(uri: str, status: int) -> str:
    """What a status from a tracking server means for a tinytrain command, and what to do: one line."""
    where = f"the tracking server at {uri}"
    if status == 401:
        return (
            f"{where} answered 401 Unauthorized: it runs with basic auth; set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to a user of it"
        )
    if status == 403:
        return (
            f"{where} answered 403 Forbidden: the server was not started with this host name in --allowed-hosts "
            "(MLflow's 'Invalid Host header'), or your user lacks permission on the experiment"
        )
    if status == 404:
        return f"{where} answered 404 Not Found: it is not an MLflow tracking server; fix --tracking-uri"
    if status >= 500:
        return f"{where} failed with {status}: see the server's log (its database may be down or full)"
    return f"{where} answered {status}"


def server_failure(error: BaseException, uri: str | None = None) -> str | None:
    """A failure to talk to a tracking server as one line naming the cause and the fix; None for any other
    error. Reads MLflow's and requests' exceptions by their text, without importing either."""
    import re

    if type(error).__module__.split(".")[0] not in ("mlflow", "requests", "urllib3", "urllib"):
        return None  # e.g. a BrokenPipeError of `tinytrain ... | head`: not the server's
    where = f"the tracking server at {uri}" if uri else "the tracking server"
    text = str(error)
    status = re.search(r"error code (\d{3}) !=|too many (\d{3}) error responses|HTTP Error (\d{3})", text)
    if status:
        return http_status_line(uri or "?", int(next(group for group in status.groups() if group)))
    if type(error).__name__ == "RestException":
        for name, code in (("UNAUTHENTICATED", 401), ("PERMISSION_DENIED", 403), ("ENDPOINT_NOT_FOUND", 404)):
            if text.startswith(name):
                return http_status_line(uri or "?", code)
        if text.startswith(("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE")):
            return http_status_line(uri or "?", 500)
        return None
    lowered = text.lower()
    if "timed out" in lowered or "timeout" in lowered:
        return timeout_line(where)
    if any(
        sign in lowered
        for sign in ("connection refused", "max retries exceeded", "failed to establish", "connection aborted")
    ):
        return unreachable_line(where)
    return None


def timeout_line(where: str) -> str:
    seconds = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_BOUNDS["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    return (
        f"{where} did not answer within {seconds} s (MLFLOW_HTTP_REQUEST_TIMEOUT): it is overloaded or hung; "
        "check it, then run the command again"
    )


def unreachable_line(where: str, reason: str = "connection refused or lost") -> str:
    return (
        f"cannot reach {where} ({reason}): start it (tinytrain server, make server) or fix --tracking-uri, "
        "then run the command again"
    )


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


LOOPBACK = ("127.0.0.1", "localhost", "::1")
DATABASE_SCHEMES = ("postgresql+psycopg://", "postgresql://", "sqlite:///")
POSTGRES_HINT = "pip install -e '.[postgres]'"


def exposure_warning(host: str, allowed_hosts: str | None, basic_auth: bool) -> str | None:
    """Check a server's --host before it starts: off loopback it needs --allowed-hosts (MLflow answers 403
    to any Host header it does not list); the warning to print when nobody has to log in, else None."""
    if host in LOOPBACK:
        return None
    if not allowed_hosts:
        raise ConfigError(
            f"--host {host} serves other machines, and MLflow refuses every Host header it was not told of: "
            "add --allowed-hosts with the names clients use (e.g. --allowed-hosts 'team-server,team-server:5001')"
        )
    if basic_auth:
        return None
    return (
        f"warning: the store is served on {host} without authentication: anyone who reaches this port can read, "
        "write and delete every run; add --basic-auth (users log in with MLFLOW_TRACKING_USERNAME/PASSWORD)"
    )


def _serving_options(host: str, port: int, allowed_hosts: str | None, basic_auth: bool) -> list[str]:
    """One web worker; the host check and basic auth where asked for."""
    options = ["--host", host, "--port", str(port), "--workers", "1"]
    if allowed_hosts:
        options += ["--allowed-hosts", allowed_hosts]
    if basic_auth:
        options += ["--app-name", "basic-auth"]
    return options


def _server_environment() -> dict[str, str]:
    """No telemetry and no job consumers: tinytrain needs none, and on two cores they slow all else."""
    return {**NO_TELEMETRY, **os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def _mlflow() -> str:
    return str(Path(sys.executable).with_name("mlflow"))


def server_command(
    uri: str, host: str = "127.0.0.1", port: int = 5000, allowed_hosts: str | None = None, basic_auth: bool = False
) -> tuple[list[str], dict[str, str]]:
    """`mlflow server` on a SQLite store, its artifacts served through it; and the environment it needs.

    One web worker and no job consumers: tinytrain needs neither, and on two cores they slow all else.
    """
    if is_http(uri):
        raise TrackingError(f"{uri} is already a server: open {uri} in a browser")
    artifacts = sqlite_path(uri).parent / "artifacts"
    command = [
        _mlflow(),
        "server",
        "--backend-store-uri",
        uri,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts.as_uri(),
        *_serving_options(host, port, allowed_hosts, basic_auth),
    ]
    return command, _server_environment()


def check_database_url(url: str) -> str:
    """A database URL `mlflow server` can keep runs in (PostgreSQL through psycopg 3, or SQLite)."""
    if url.startswith("postgres://"):
        raise ConfigError(f"'{url}': SQLAlchemy needs postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE")
    if not url.startswith(DATABASE_SCHEMES):
        raise ConfigError(
            f"'{url}' is not a database URL: use postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE "
            "(or sqlite:///PATH)"
        )
    if url.startswith("postgresql"):
        import importlib.util

        driver = "psycopg" if url.startswith("postgresql+psycopg://") else "psycopg2"
        if importlib.util.find_spec(driver) is None:
            raise ConfigError(f"{url.split('://')[0]} needs {driver}: run {POSTGRES_HINT} in the project's .venv")
    return url


def database_server_commands(
    url: str,
    artifacts: str,
    serve_artifacts: bool = True,
    host: str = "127.0.0.1",
    port: int = 5000,
    allowed_hosts: str | None = None,
    basic_auth: bool = False,
) -> tuple[list[str], list[str], dict[str, str]]:
    """`mlflow db upgrade` (creates or upgrades the schema) and `mlflow server` on a database, for a team.

    Artifacts go to `artifacts` (a folder or a URI): served by the server (clients send them over HTTP),
    or, without serve_artifacts, written there by each client itself (a folder every machine mounts).
    """
    check_database_url(url)
    location = artifacts if "://" in artifacts else Path(artifacts).expanduser().resolve().as_uri()
    where = ["--serve-artifacts", "--artifacts-destination", location]
    if not serve_artifacts:
        where = ["--no-serve-artifacts", "--default-artifact-root", location]
    upgrade = [_mlflow(), "db", "upgrade", url]
    serve = [
        _mlflow(),
        "server",
        "--backend-store-uri",
        url,
        *where,
        *_serving_options(host, port, allowed_hosts, basic_auth),
    ]
    return upgrade, serve, _server_environment()
