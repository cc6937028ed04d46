"""The MLflow UI in a real browser: the links of a fresh default sweep (5 optimizers x 3 learning rates x 3 seeds)
open its prepared views: every run in a table grouped by cell, and charts of the runs that finished, the
loss on a log scale and the axes against the final loss in parallel coordinates.

`tinytrain ui` serves the store on a free loopback port in its own process group and prints the links with that
port; Debian's chromium renders the pages headless (`--dump-dom`), as a user's browser would. CI installs
chromium (.ci/run). With TINYTRAIN_SCREENSHOTS=FOLDER the views are also saved there as PNG files (the docs'
pictures: `TINYTRAIN_SCREENSHOTS=docs .venv/bin/python -m pytest tests/system/test_ui.py`).
"""

from __future__ import annotations

import html
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    PROJECT_ROOT,
    client,
    free_port,
    group_alive,
    invoke,
    start_in_own_group,
    stop_group,
    wait_for_health,
)

pytestmark = pytest.mark.slow

DEFAULT_GRID = PROJECT_ROOT / "experiments" / "optimizer-grid.toml"
PRINTED_ADDRESS = "http://127.0.0.1:5000"  # what a sweep on a SQLite store prints (`tinytrain ui`'s default)
LINK_NAMES = ("charts of its finished runs", "every run, grouped by cell", "cell summaries")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=40000",  # the charts draw after the runs and their histories load
    "--window-size=1600,4000",  # tall: the table renders only the rows in view, and there are 60 (15 groups)
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
            timeout=240,
        )
        dom = done.stdout
        if all(text in dom for text in wanted):
            break
    return dom


def screenshot(url: str, profile: Path, name: str) -> None:
    """With TINYTRAIN_SCREENSHOTS=FOLDER, the page as a PNG in that folder (for the docs)."""
    folder = os.environ.get("TINYTRAIN_SCREENSHOTS")
    if not folder:
        return
    flags = [flag for flag in CHROMIUM_FLAGS if not flag.startswith("--window-size")] + ["--window-size=1900,1150"]
    target = Path(folder).resolve() / name
    subprocess.run(
        [chromium(), *flags, f"--user-data-dir={profile}-shot", f"--screenshot={target}", url],
        capture_output=True,
        timeout=240,
        check=True,
    )


def text_of(dom: str) -> str:
    """The page's visible text, one space between words."""
    text = re.sub(r"<script.*?</script>|<style.*?</style>|<[^>]+>", " ", dom, flags=re.S)
    return " ".join(html.unescape(text).split())


def svg_texts(dom: str) -> list[str]:
    """The <text> of the charts' SVG (plotly's axis titles and tick labels), in document order."""
    return [html.unescape(text) for text in re.findall(r"<text[^>]*>([^<]{1,40})</text>", dom)]


def numbers(texts: list[str]) -> list[float]:
    values = []
    for text in texts:
        try:
            values.append(float(text.replace("\u2212", "-")))
        except ValueError:
            break
    return values


def links_after(output: str, heading: str) -> list[str]:
    """The three links printed after a heading line: charts, every run, cell summaries."""
    lines = output.splitlines()
    start = next(index for index, line in enumerate(lines) if heading in line)
    found = lines[start + 1 : start + 4]
    assert [line.split(": http")[0].strip() for line in found][:2] == list(LINK_NAMES[:2]), output
    return [line.split(": ", 1)[1] for line in found]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{folder / 'store' / 'mlflow.db'}"
    swept = invoke(["sweep", str(DEFAULT_GRID), "--quiet", "--tracking-uri", uri])
    assert swept.exit_code == 0, swept.output
    port = free_port()
    command = [str(Path(sys.executable).with_name("tinytrain")), "ui", "--port", str(port), "--tracking-uri", uri]
    log = folder / "ui.log"
    process = start_in_own_group(command, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, log)
    address = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(address, process, log)
        experiment = client(uri).get_experiment_by_name("optimizer-grid")
        runs = client(uri).search_runs([experiment.experiment_id], "tags.`tinytrain.kind` = 'run'")
        yield {
            "uri": uri,
            "address": address,
            "sweep_output": swept.output,
            "ui_output": log.read_text(),
            "links": links_after(log.read_text(), "its latest sweep"),
            "folder": folder,
            "diverged": sorted(run.info.run_name for run in runs if run.data.tags["tinytrain.outcome"] == "diverged"),
            "runs": sorted(run.info.run_name for run in runs),
        }
    finally:
        stop_group(process)
        assert not group_alive(process.pid)  # no server process left behind


def test_the_sweep_prints_the_command_that_serves_its_store_and_tinytrain_ui_the_same_links_at_its_port(ui):
    output = ui["sweep_output"]
    assert f"Browse: `tinytrain ui --tracking-uri {ui['uri']}`, then open" in output  # not `make ui`: not mlruns/
    printed = links_after(output, "Browse:")
    assert all(link.startswith(f"{PRINTED_ADDRESS}/#/experiments/") for link in printed)
    assert ui["links"] == [link.replace(PRINTED_ADDRESS, ui["address"]) for link in printed]
    parent = output.split("(sweep run ")[1].split(")")[0]
    assert f"its latest sweep (run {parent})" in ui["ui_output"]


def test_a_default_sweep_has_diverged_runs_to_leave_out(ui):
    assert len(ui["runs"]) == 45 and 0 < len(ui["diverged"]) < 45
    assert all(name.endswith(" (diverged)") for name in ui["diverged"])


def test_the_runs_view_shows_the_15_cells_grouped_and_every_one_of_the_45_runs(ui):
    url = ui["links"][1]
    dom = rendered(url, ui["folder"] / "chrome-runs", ["45 matching runs", "Group: optimizer: sgd, lr: 0.1"])
    text = text_of(dom)
    assert "45 matching runs" in text
    groups = set(re.findall(r"Group: (optimizer: [\w-]+, lr: [\d.e-]+)", text))
    assert len(groups) == 15, groups
    shown = set(re.findall(r"\b[a-z-]+-lr[\d.e-]+-seed\d(?: \(diverged\))?", text))
    assert shown == set(ui["runs"])  # every run, the diverged ones named so
    for column in ("optimizer", "lr", "seed", "final_loss", "tinytrain.outcome"):
        assert column in text
    screenshot(url, ui["folder"] / "chrome-runs", "mlflow-ui-runs.png")


def test_the_charts_view_draws_a_log_scaled_loss_and_parallel_coordinates_without_the_diverged_runs(ui):
    url = ui["links"][0]
    wanted = ['title="loss"', 'title="Parallel Coordinates"', "final_loss"]
    dom = rendered(url, ui["folder"] / "chrome-charts", wanted)
    assert all(text in dom for text in wanted), "the charts did not render"
    finished = len(ui["runs"]) - len(ui["diverged"])
    text = text_of(dom)
    assert f"{finished} matching runs" in text
    assert "(diverged)" not in dom  # not in the run list, not in a chart's legend
    groups = set(re.findall(r"Group: (optimizer: [\w-]+, lr: [\d.e-]+)", text))
    assert 0 < len(groups) < 15  # the cells whose every seed diverged are gone too
    assert "does not support aggregated string values" not in text

    parallel = svg_texts(dom[dom.index('title="Parallel Coordinates"') :])
    # plotly's parcoords writes each axis's tick labels, then its title: optimizer, lr, log10_final_loss
    lr_at, loss_at = parallel.index("lr"), parallel.index("log10_final_loss")
    assert {"sgd", "adam", "rmsprop"} <= set(parallel[: parallel.index("optimizer")])
    decades = numbers(parallel[lr_at + 1 : loss_at])
    assert decades and max(decades) < 0  # below 1; a diverged run ends above 1e3 x its initial loss (about 0.1)

    loss = svg_texts(dom[dom.index('title="loss"') :])
    values = numbers(loss[: loss.index("Step")])  # the x ticks (steps, rising), then the y ticks from the bottom
    restart = next(index for index in range(1, len(values)) if values[index] < values[index - 1])
    ticks = [value for value in values[restart:] if value > 0]  # plotly labels the lowest decades "0"
    ratios = {round(math.log10(high / low), 6) for low, high in zip(ticks, ticks[1:], strict=False)}
    assert len(ticks) >= 2 and len(ratios) == 1 and ratios.pop() >= 1, f"a linear loss axis: {ticks}"
    screenshot(url, ui["folder"] / "chrome-charts", "mlflow-ui-charts.png")


def test_the_cell_summaries_link_shows_one_summary_run_per_cell_and_no_seed_run(ui):
    dom = rendered(ui["links"][2], ui["folder"] / "chrome-cells", ["15 matching runs", "adam-lr0.01-median"])
    text = text_of(dom)
    assert "15 matching runs" in text
    cells = {name.removesuffix("-median") for name in re.findall(r"\b[a-z-]+-lr[\d.e-]+-median\b", text)}
    assert cells == {name.split("-seed")[0] for name in ui["runs"]}
    assert "-seed0" not in text  # the summaries only, apart from the seed runs
