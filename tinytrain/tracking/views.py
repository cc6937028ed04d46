"""The MLflow UI's prepared views of a sweep, and the links that open them.

MLflow's runs page reads a shared view state from an experiment tag `mlflow.sharedViewState.<key>` when it is
opened with `?viewStateShareKey=<key>`; the 3.17 UI takes plain JSON there (useSharedExperimentViewState):
the search facets (searchFilter, orderByKey, orderByAsc) and the page's UI state (selectedColumns, groupBy,
runsHiddenMode, compareRunCharts, ...). It drops per-run visibility (runsHidden, runsVisibilityMap) and pinned
runs from a shared state, so a view cannot list a run in its table and leave it out of its charts: a sweep
gets two views, its charts without the diverged runs, and every one of its runs in a table.

No MLflow import here: the sweep's process builds the views and the CLI prints their links.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from tinytrain.results import FINISHED
from tinytrain.tracking.contract import KIND, OUTCOME, PARENT
from tinytrain.tracking.location import RUN_NAME_ORDER, runs_page_url, sweep_search

VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow's experiment tag of a shared view state
CHARTS, RUNS = "charts", "runs"  # a sweep's two views
MODEL_METRICS = "Model metrics"  # the UI's section of a run's own metrics (the other is "System metrics")
# Metrics the views leave uncharted (the UI would add a chart for each): the same for every run, a timing, and
# the final loss and steps to target, which the table and the parallel coordinates show
NOT_CHARTED = ("initial_loss", "train_seconds", "final_loss", "log10_final_loss", "steps_to_target")


def view_key(parent_run_id: str, view: str) -> str:
    """The share key of a sweep's view: `tinytrain-<parent run id>-charts` or `...-runs`."""
    return f"tinytrain-{parent_run_id}-{view}"


def view_tag(parent_run_id: str, view: str) -> str:
    return VIEW_TAG_PREFIX + view_key(parent_run_id, view)


def seed_runs_search(parent_run_id: str, finished_only: bool = False) -> str:
    """The MLflow filter of a sweep's seed runs (never its cell summaries): all of them, or the finished ones
    only (not those that diverged, failed, or that a budget stopped early: their last loss is no final loss)."""
    search = f"tags.`{PARENT}` = '{parent_run_id}' and tags.`{KIND}` = 'run'"
    return search + f" and tags.`{OUTCOME}` = '{FINISHED}'" if finished_only else search


def _column(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"  # how the UI names a column: params.`lr`, metrics.`final_loss`, tags.`...`


def sweep_views(parent_run_id: str, axes: list[str], metric: str = "final_loss") -> dict[str, dict]:
    """The two views of a sweep (view name -> the JSON of its shared state).

    `axes` are the grid's axes but the seed (each a run param): the table groups the runs by them, one group
    per cell with the average over its seeds. `metric` is the final metric of the table and the
    parallel-coordinates chart (final_loss there in decades: log10_final_loss, results.VIEW_METRICS).

    charts: the seed runs that finished (not those that diverged, failed or were stopped early), grouped by
    cell in the table; the charts draw every run (not the first ten): the loss on a log scale, and the axes
    against the final metric in parallel coordinates.
    The charts draw runs, not the cells' averages: MLflow draws no parallel-coordinates chart of grouped runs
    over a string axis such as the optimizer.
    runs: every seed run of the sweep in a table, grouped by cell and expanded, with the axes, the seed, the
    outcome (diverged or finished), the final metric and the steps to the target; its charts draw the cells'
    averages.
    """
    group_by = {
        "aggregateFunction": "average",
        "groupByKeys": [{"mode": "param", "groupByData": axis} for axis in axes],
    }
    # its axes are linear: a final loss in decades (a run that diverged has none), any other metric as it is
    charted = "log10_final_loss" if metric == "final_loss" else metric
    section = f"tinytrain-{parent_run_id}-section"
    sections = [
        {"uuid": section, "name": MODEL_METRICS, "display": True, "isReordered": False},
        {"uuid": f"{section}-system", "name": "System metrics", "display": False, "isReordered": False},
    ]
    loss_chart = {
        "uuid": f"tinytrain-{parent_run_id}-loss",
        "type": "LINE",
        "metricSectionId": section,
        "deleted": False,
        "isGenerated": False,
        "displayName": "loss (log scale)",
        "metricKey": "loss",
        "selectedMetricKeys": ["loss"],
        "scaleType": "log",
        "xAxisScaleType": "linear",
        "xAxisKey": "step",
        "selectedXAxisMetricKey": "",
        "lineSmoothness": 0,
        "useGlobalXaxisKey": False,
        "useGlobalLineSmoothing": False,
        "runsCountToCompare": 100,
        "range": {},
    }
    parallel_chart = {
        "uuid": f"tinytrain-{parent_run_id}-parallel",
        "type": "PARALLEL",
        "metricSectionId": section,
        "deleted": False,
        "isGenerated": False,
        "displayName": f"{', '.join(axes)} against {charted}",
        "selectedParams": list(axes),
        "selectedMetrics": [charted],
        "runsCountToCompare": 100,
    }
    # deleted charts of the metrics that compare nothing: the UI would add a chart for each metric it finds
    hidden = [
        {"uuid": f"tinytrain-{parent_run_id}-{name}", "type": "BAR", "metricKey": name, "deleted": True}
        for name in NOT_CHARTED
    ]
    columns = [_column("params", axis) for axis in axes]
    columns += [_column("params", "seed"), _column("tags", OUTCOME), _column("metrics", metric)]
    columns += [_column("metrics", "steps_to_target")]
    common = {
        "orderByKey": RUN_NAME_ORDER,  # not start time: the UI would fetch the parent run too
        "orderByAsc": True,
        "groupBy": group_by,
        "groupsExpanded": {},  # every group open
        "runsHiddenMode": "SHOW_ALL",
        "hideEmptyCharts": False,
        "selectedColumns": columns,
        "compareRunCharts": [parallel_chart, loss_chart, *hidden],
        "compareRunSections": sections,
        "isAccordionReordered": False,
    }
    return {
        CHARTS: {
            **common,
            "searchFilter": seed_runs_search(parent_run_id, finished_only=True),
            "useGroupedValuesInCharts": False,
        },
        RUNS: {**common, "searchFilter": seed_runs_search(parent_run_id), "useGroupedValuesInCharts": True},
    }


def view_tags(parent_run_id: str, axes: list[str], metric: str = "final_loss") -> dict[str, str]:
    """The experiment tags that hold a sweep's views (tag -> JSON)."""
    views = sweep_views(parent_run_id, axes, metric)
    return {view_tag(parent_run_id, name): json.dumps(state, separators=(",", ":")) for name, state in views.items()}


def view_url(address: str, experiment_id: str, parent_run_id: str, view: str) -> str:
    """The link that opens a sweep's view: its charts (CHARTS) or its table (RUNS), in the Model training view."""
    query = {"viewStateShareKey": view_key(parent_run_id, view), "workflowType": "machine_learning"}
    query["compareRunsMode"] = "CHART" if view == CHARTS else "TABLE"
    return f"{address}/#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"


@dataclass(frozen=True)
class SweepLinks:
    """Where a sweep is in the UI: its charts, every run of it in a table, and its cell summaries."""

    charts: str
    runs: str
    cells: str

    def lines(self) -> list[str]:
        return [
            f"  charts of its finished runs: {self.charts}",
            f"  every run, grouped by cell: {self.runs}",
            f"  cell summaries (median curves, ranks): {self.cells}",
        ]


def sweep_links(address: str, experiment_id: str, parent_run_id: str) -> SweepLinks:
    """The links to a sweep's views on the UI at `address` (http://host:port)."""
    cells = runs_page_url(
        address,
        experiment_id,
        address,
        search=sweep_search(parent_run_id, cells_only=True),
        charts=True,
        order_by="metrics.`rank`",
    )
    return SweepLinks(
        view_url(address, experiment_id, parent_run_id, CHARTS),
        view_url(address, experiment_id, parent_run_id, RUNS),
        cells,
    )
