"""The UI's prepared views of a sweep: what their shared view state holds, held against the installed MLflow UI's
own code (the fields it takes from a shared state), and the links and commands that open them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tinytrain.tracking.location import resolve_tracking_uri, ui_address, ui_command
from tinytrain.tracking.views import CHARTS, RUNS, sweep_links, sweep_views, view_tag, view_tags, view_url

PARENT = "0123456789abcdef0123456789abcdef"


def ui_bundle() -> str:
    """The installed MLflow UI's JavaScript (minified), where it says what a shared view state may hold."""
    import mlflow

    folder = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    return "\n".join(path.read_text(errors="replace") for path in sorted(folder.glob("*.js")))


@pytest.fixture(scope="module")
def taken_fields() -> set[str]:
    """The UI state fields (EXPERIMENT_PAGE_UI_STATE_FIELDS) and search facets a shared view state sets, less
    the per-run ones it drops (runsHidden, runsVisibilityMap, runsPinned, ...), as the installed UI has them."""
    bundle = ui_bundle()
    fields = re.search(r'\["selectedColumns","columnOrder"[^\]]*\]', bundle)
    dropped = re.search(r'\["runsExpanded","runsPinned","runsHidden"[^\]]*\]', bundle)
    facets = re.search(r'\["searchFilter","orderByKey","orderByAsc"[^\]]*\]', bundle)
    assert fields and dropped and facets, "the installed MLflow UI no longer names its shared view state fields"
    assert "mlflow.sharedViewState." in bundle and "viewStateShareKey" in bundle
    return (set(json.loads(fields.group())) - set(json.loads(dropped.group()))) | set(json.loads(facets.group()))


def test_every_field_of_a_view_is_one_the_installed_ui_takes_from_a_shared_state(taken_fields):
    for name, state in sweep_views(PARENT, ["optimizer", "lr"]).items():
        assert set(state) <= taken_fields, f"{name}: the UI drops {set(state) - taken_fields}"


def test_the_charts_view_shows_the_finished_runs_only_and_no_cell_summaries():
    charts, runs = (sweep_views(PARENT, ["optimizer", "lr"])[view] for view in (CHARTS, RUNS))
    assert charts["searchFilter"] == (
        f"tags.`mlflow.parentRunId` = '{PARENT}' and tags.`tinytrain.kind` = 'run' "
        "and tags.`tinytrain.outcome` = 'finished'"
    )
    assert runs["searchFilter"] == f"tags.`mlflow.parentRunId` = '{PARENT}' and tags.`tinytrain.kind` = 'run'"


def test_the_views_group_by_cell_with_the_average_and_show_every_run():
    for state in sweep_views(PARENT, ["optimizer", "lr", "schedule"]).values():
        assert state["groupBy"] == {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "param", "groupByData": axis} for axis in ("optimizer", "lr", "schedule")],
        }
        assert state["runsHiddenMode"] == "SHOW_ALL" and state["groupsExpanded"] == {}
        assert state["orderByKey"] == "tags.`mlflow.runName`"  # by start time the UI would add the parent run
        columns = state["selectedColumns"]
        assert columns == [
            "params.`optimizer`",
            "params.`lr`",
            "params.`schedule`",
            "params.`seed`",
            "tags.`tinytrain.outcome`",
            "metrics.`final_loss`",
            "metrics.`steps_to_target`",
        ]


def test_the_charts_are_a_log_scaled_loss_and_the_axes_against_the_final_metric_in_parallel_coordinates():
    views = sweep_views(PARENT, ["optimizer", "lr"], metric="final_test_accuracy")
    charts = {chart["type"]: chart for chart in views[CHARTS]["compareRunCharts"] if not chart["deleted"]}
    assert set(charts) == {"LINE", "PARALLEL"}
    assert charts["LINE"]["metricKey"] == "loss" and charts["LINE"]["scaleType"] == "log"
    assert charts["PARALLEL"]["selectedParams"] == ["optimizer", "lr"]
    assert charts["PARALLEL"]["selectedMetrics"] == ["final_test_accuracy"]
    parallel = next(
        chart for chart in sweep_views(PARENT, ["optimizer"])[CHARTS]["compareRunCharts"] if chart["type"] == "PARALLEL"
    )
    assert parallel["selectedMetrics"] == ["log10_final_loss"]  # linear axes: the final loss in decades
    sections = {section["uuid"] for section in views[CHARTS]["compareRunSections"]}
    assert {chart["metricSectionId"] for chart in charts.values()} <= sections
    # MLflow draws no parallel coordinates of grouped runs over a string axis: the charts view draws runs
    assert views[CHARTS]["useGroupedValuesInCharts"] is False and views[RUNS]["useGroupedValuesInCharts"] is True


def test_the_view_tags_are_plain_json_under_mlflows_prefix_and_fit_an_experiment_tag():
    tags = view_tags(PARENT, ["optimizer", "lr"])
    assert set(tags) == {f"mlflow.sharedViewState.tinytrain-{PARENT}-{view}" for view in (CHARTS, RUNS)}
    assert set(tags) == {view_tag(PARENT, CHARTS), view_tag(PARENT, RUNS)}
    for value in tags.values():
        assert json.loads(value) and len(value) < 20_000  # MLflow's limit for an experiment tag's value


def test_a_view_link_carries_the_share_key_and_no_search_facet():
    """Any search facet in the link (searchFilter, orderByKey, ...) would make the UI ignore the shared state."""
    url = view_url("http://127.0.0.1:5123", "7", PARENT, CHARTS)
    address, _, route = url.partition("/#")
    assert address == "http://127.0.0.1:5123" and route.startswith("/experiments/7/runs?")
    query = {key: values[0] for key, values in parse_qs(urlsplit(route).query).items()}
    assert query == {
        "viewStateShareKey": f"tinytrain-{PARENT}-charts",
        "workflowType": "machine_learning",
        "compareRunsMode": "CHART",
    }
    assert parse_qs(urlsplit(view_url("http://h:1", "7", PARENT, RUNS)).fragment.partition("?")[2])[
        "compareRunsMode"
    ] == ["TABLE"]


def test_the_links_of_a_sweep_keep_the_summary_runs_apart():
    links = sweep_links("http://10.0.0.2:8080", "3", PARENT)
    assert all(link.startswith("http://10.0.0.2:8080/#/experiments/3/runs?") for link in vars(links).values())
    assert "tinytrain.kind%60%20%3D%20%27cell%27" in links.cells  # the cell summaries only
    assert "cell" not in links.charts and "cell" not in links.runs
    assert [line.split(": ")[0].strip() for line in links.lines()] == [
        "charts of its finished runs",
        "every run, grouped by cell",
        "cell summaries (median curves, ranks)",
    ]


def test_the_ui_command_names_the_store_unless_plain_tinytrain_ui_opens_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert ui_command(resolve_tracking_uri(None)) == "tinytrain ui"
    other = resolve_tracking_uri(str(tmp_path / "other store" / "mlflow.db"))
    assert ui_command(other) == f"tinytrain ui --tracking-uri '{other}'"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    assert ui_command(other) == "tinytrain ui"
    assert ui_command("http://127.0.0.1:5001") is None  # a server is its own UI


def test_the_ui_address_is_the_host_and_port_it_serves():
    assert ui_address("127.0.0.1", 5123) == "http://127.0.0.1:5123"
    assert ui_address("::1", 80) == "http://[::1]:80"
    assert ui_address("0.0.0.0", 5000) not in ("http://0.0.0.0:5000",)  # a browser cannot open 0.0.0.0


def test_a_finished_run_has_its_final_loss_in_decades_and_its_steps_to_target_for_the_views():
    import math

    from tinytrain.results import RunResult
    from tinytrain.spec import load_experiment

    spec = load_experiment(None, ["optimizer=adam", "lr=0.01", "seed=0"]).specs()[0]
    assert RunResult(spec, [0.1, 0.01, 1e-4, 1e-6], "finished").view_metrics() == {
        "log10_final_loss": -6.0,
        "steps_to_target": 2.0,  # the first step at or below 1e-3
    }
    assert RunResult(spec, [0.1, 0.05], "finished").view_metrics() == {"log10_final_loss": math.log10(0.05)}
    assert RunResult(spec, [0.1, 0.0], "finished").view_metrics()["log10_final_loss"] == -45.0
    assert RunResult(spec, [0.1, 1e9], "diverged").view_metrics() == {}  # out of the parallel coordinates
    assert RunResult(spec, [], "failed").view_metrics() == {}
