"""Runs that fail: `tinytrain run` says so in one line, the next sweep trains the failed cell again, and
compare and plot name the cells that have no finished run (and are whole again after a re-run or --force).

A run fails here the way an error inside training makes it fail: tinytrain's own build_optimizer raises
for one optimizer (torch and MLflow are the real ones; the key of the cell is unchanged).
"""

from __future__ import annotations

import json

import pytest

import tinytrain.engines.sequential
from tests.conftest import children, invoke

GRID = """name = "failures"
steps = 3
[grid]
optimizer = ["sgd", "adam"]
lr = [0.01]
seed = [0]
"""


@pytest.fixture
def sgd_fails(monkeypatch):
    """While failing["sgd"] holds, every sgd run raises inside training."""
    real, failing = tinytrain.engines.sequential.build_optimizer, {"sgd": True}

    def build_optimizer(kind, *args):
        if failing.get(kind):
            raise RuntimeError("out of memory (made by the test)")
        return real(kind, *args)

    monkeypatch.setattr(tinytrain.engines.sequential, "build_optimizer", build_optimizer)
    return failing


def test_tinytrain_run_of_a_failing_run_is_one_line_and_exit_1(sgd_fails, store_uri):
    result = invoke(["run", "--optimizer", "sgd", "--lr", "0.01", "--steps", "2"])
    assert result.exit_code == 1, result.output
    (run,) = children(store_uri, "optimizer-grid")
    assert result.stdout == ""
    assert result.stderr == (
        f"sgd-lr0.01-seed0: failed: RuntimeError: out of memory (made by the test); run {run.info.run_id}\n"
    )
    assert run.info.status == "FAILED"
    assert run.data.tags["tinytrain.error"] == "RuntimeError: out of memory (made by the test)"


def test_a_failed_cell_is_trained_by_the_next_sweep_and_reports_name_it_until_then(
    sgd_fails, store_uri, experiment_file, tmp_path
):
    path = experiment_file(GRID)
    first = invoke(["sweep", path, "--quiet"])
    assert first.exit_code == 1
    assert "2 runs: 2 trained (1 finished, 0 diverged, 1 failed), 0 already done" in first.stdout
    note = (
        "note: 1 of 2 cells have no finished run (failed, killed or not run yet: sgd-lr0.01-seed0); run the "
        "sweep again to fill them\n"
    )
    compare = invoke(["compare", "--experiment", "failures", "--format", "json"])
    assert compare.exit_code == 0 and compare.stderr == note
    assert [row["optimizer"] for row in json.loads(compare.stdout)["rows"]] == ["adam"]
    plot = invoke(["plot", "--experiment", "failures", "--out", str(tmp_path / "curves.png")])
    assert plot.exit_code == 0 and plot.stderr == note
    assert "1 panel(s), 1 line(s)" in plot.stdout

    sgd_fails["sgd"] = False  # the failure is gone: the same command trains exactly the failed cell
    again = invoke(["sweep", path, "--quiet"])
    assert again.exit_code == 0, again.output
    assert "2 runs: 1 trained (1 finished, 0 diverged, 0 failed), 1 already done" in again.stdout
    statuses = sorted((run.data.params["optimizer"], run.info.status) for run in children(store_uri, "failures"))
    assert statuses == [("adam", "FINISHED"), ("sgd", "FAILED"), ("sgd", "FINISHED")]
    whole = invoke(["compare", "--experiment", "failures", "--format", "json"])
    assert whole.exit_code == 0 and whole.stderr == ""
    rows = json.loads(whole.stdout)["rows"]
    assert sorted(row["optimizer"] for row in rows) == ["adam", "sgd"]

    forced = invoke(["sweep", path, "--quiet", "--force"])
    assert forced.exit_code == 0, forced.output
    assert "Replaced 2 earlier finished run(s)" in forced.stdout
    after = invoke(["compare", "--experiment", "failures", "--format", "json"])
    assert after.stderr == "" and json.loads(after.stdout)["rows"] == rows  # the same numbers, from the new runs
    plot = invoke(["plot", "--experiment", "failures", "--out", str(tmp_path / "curves.png")])
    assert plot.exit_code == 0 and plot.stderr == "" and "2 panel(s), 2 line(s)" in plot.stdout
