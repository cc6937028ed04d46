"""The MLflow UI in a real browser: the links a sweep prints open the Model training view on this sweep's
cells (one summary run each, with a `loss` chart) and on every run of the sweep, one row each.

`tinytrain ui` serves the store on a free loopback port in its own process group; Debian's chromium renders
the page headless (`--dump-dom`), as a user's browser would. CI installs chromium (.ci/run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, group_alive, invoke, start_in_own_group, stop_group, wait_for_health

pytestmark = pytest.mark.slow

NAME = "ui-e2e"
GRID = f"""# tinytrain sweep grid.toml
name = "{NAME}"
steps = 5
[grid]
optimizer = ["sgd", "adam"]
lr = [0.01]
seed = [0, 1]
"""
PRINTED_ADDRESS = "http://127.0.0.1:5000"  # what a sweep on a SQLite store prints (`make ui`'s port)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=20000",
    "--window-size=1600,1000",
]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs it with apt-get")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def rendered(url: str, profile: Path, wanted: list[str], attempts: int = 3) -> str:
    """The page's DOM once it shows everything wanted (the charts render asynchronously: a few tries)."""
    dom = ""
    for attempt in range(attempts):
        done = subprocess.run(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}-{attempt}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=180,
        )
        dom = done.stdout
        if all(text in dom for text in wanted):
            break
    return dom


def text_of(dom: str) -> str:
    """The page's visible text, one space between words."""
    import html

    text = re.sub(r"<script.*?</script>|<style.*?</style>|<[^>]+>", " ", dom, flags=re.S)
    return " ".join(html.unescape(text).split())


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{folder / 'store' / 'mlflow.db'}"
    (folder / "grid.toml").write_text(GRID)
    swept = invoke(["sweep", str(folder / "grid.toml"), "--quiet", "--tracking-uri", uri])
    assert swept.exit_code == 0, swept.output
    links = re.findall(r"http://\S+", swept.output.split("Browse:")[1])
    port = free_port()
    command = [str(Path(sys.executable).with_name("tinytrain")), "ui", "--port", str(port), "--tracking-uri", uri]
    log = folder / "ui.log"
    process = start_in_own_group(command, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, log)
    address = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(address, process, log)
        yield {
            "links": [link.replace(PRINTED_ADDRESS, address) for link in links],
            "folder": folder,
            "output": swept.output,
        }
    finally:
        stop_group(process)
        assert not group_alive(process.pid)  # no server process left behind


def test_the_printed_links_open_the_model_training_view_of_this_sweep(ui):
    cells, runs = ui["links"]
    parent = ui["output"].split("(sweep run ")[1].split(")")[0]
    for link in (cells, runs):
        assert "#/experiments/" in link and "/runs?workflowType=machine_learning&" in link
        assert parent in link
    assert "compareRunsMode=CHART" in cells and "tinytrain.kind" in cells


def test_the_cells_link_shows_each_cells_summary_and_a_loss_chart(ui):
    names = ["sgd-lr0.01-median", "adam-lr0.01-median"]
    dom = rendered(ui["links"][0], ui["folder"] / "chrome-cells", [*names, 'title="loss"'])
    assert all(name in dom for name in names), "the cells' summary runs are not on the page"
    assert 'title="loss"' in dom, "no loss chart on the page"
    assert "2 matching runs" in text_of(dom)
    assert "seed0" not in dom  # the cells only, not the runs of their seeds


def test_the_runs_link_shows_every_run_of_the_sweep_one_row_each(ui):
    names = [f"{optimizer}-lr0.01-seed{seed}" for optimizer in ("sgd", "adam") for seed in (0, 1)]
    dom = rendered(ui["links"][1], ui["folder"] / "chrome-runs", names)
    assert all(name in dom for name in names), "the sweep's runs are not on the page"
    assert "6 matching runs" in text_of(dom)  # 4 runs and 2 cell summaries; not one collapsed parent row
    assert "sweep-2" not in dom  # the parent (named sweep-<date>) is not a row
