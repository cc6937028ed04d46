"""Plugins through the commands, on a real SQLite store: bad plugins are one line and exit 2 with nothing
written; a store made with plugins compares, plots and reads back after they are gone; reproduce needs them
and says so in one line. The plugin modules are real files on sys.path (tests/unit/test_plugins.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import children, invoke, runs_of
from tests.unit.test_plugins import plugin_path  # noqa: F401 - the fixture
from tinytrain import plugins

SWEEP = """
name = "e2e"
steps = 4
problem = "stripes"
loss = "cross_entropy"
batch_size = 8
eval_every = 2
[problem_settings]
noise = 0.3
[grid]
optimizer = ["halfstep", "mine", "adam"]
lr = [0.01]
seed = [0, 1]
[optimizers.mine]
type = "myoptim:HalfStep"
scale = 0.25
"""


def store_file(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///"))


@pytest.mark.parametrize(
    "change, message",
    [
        (("myoptim:HalfStep", "notorch:Plain"), "is not a torch.optim.Optimizer subclass"),
        (("myoptim:HalfStep", "broken:Anything"), "importing broken raised ZeroDivisionError"),
        (("myoptim:HalfStep", "nosuch:Thing"), "no module named 'nosuch' here"),
        (('"halfstep", ', '"halfstp", '), "unknown optimizer 'halfstp' in grid.optimizer (did you mean 'halfstep'?)"),
        (("scale = 0.25", "scal = 0.25"), "(did you mean 'scale'?)"),
        (("noise = 0.3", "nois = 0.3"), "unknown setting 'nois' in problem_settings (did you mean 'noise'?)"),
        (('problem = "stripes"', 'problem = "strips"'), "unknown problem 'strips' (did you mean 'stripes'?)"),
    ],
)
def test_a_bad_plugin_is_one_line_exit_2_and_nothing_written(
    plugin_path,  # noqa: F811
    experiment_file,
    store_uri,
    change,
    message,
):
    result = invoke(["sweep", experiment_file(SWEEP.replace(*change)), "--quiet"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert message in line
    assert not store_file(store_uri).exists()


def forget(folder: Path, monkeypatch) -> None:
    """The plugins are uninstalled: off sys.path, out of sys.modules, their entry points gone."""
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry != str(folder)])
    plugins.entry_points.cache_clear()
    for name in ("myoptim", "myproblem"):
        sys.modules.pop(name, None)


def test_a_store_made_with_plugins_reads_back_without_them_and_reproduces_with_them(
    plugin_path,  # noqa: F811
    experiment_file,
    store_uri,
    monkeypatch,
):
    result = invoke(["sweep", experiment_file(SWEEP), "--quiet"])
    assert result.exit_code == 0, result.output
    runs = children(store_uri)
    assert len(runs) == 6 and {run.data.tags["tinytrain.outcome"] for run in runs} == {"finished"}
    halfstep = next(run for run in runs if run.data.params["optimizer"] == "halfstep")
    assert halfstep.data.tags["tinytrain.plugin.optimizer.class"] == "myoptim:HalfStep"
    assert halfstep.data.tags["tinytrain.plugin.problem.class"] == "myproblem:Stripes"
    assert halfstep.data.params["problem.noise"] == "0.3" and halfstep.data.params["scale"] == "0.5"
    assert "final_test_loss" in halfstep.data.metrics

    forget(plugin_path, monkeypatch)
    compared = invoke(["compare", "--experiment", "e2e"])
    assert compared.exit_code == 0, compared.output
    assert all(name in compared.output for name in ("halfstep", "mine", "adam"))
    parent = next(run for run in runs_of(store_uri) if run.data.tags.get("tinytrain.kind") == "sweep")
    resumed = invoke(["sweep", "--from-run", parent.info.run_id, "--dry-run"])
    assert resumed.exit_code == 0, resumed.output
    assert "e2e: 6 runs, 0 to run, 6 already done" in resumed.output  # the same keys, from the record alone
    plotted = invoke(["plot", "--experiment", "e2e", "--out", "curves.png"])
    assert plotted.exit_code == 0, plotted.output
    assert Path("curves.png").stat().st_size > 0
    from tinytrain.tracking import read_sweep

    record = read_sweep(store_uri, "e2e", with_losses=True)
    assert len(record.runs) == 6 and not record.missing
    assert all(len(run.losses) == 5 for run in record.runs)
    assert "myoptim" not in sys.modules and "myproblem" not in sys.modules

    without = invoke(["reproduce", halfstep.info.run_id])
    assert without.exit_code == 2, without.output
    (line,) = without.output.strip().splitlines()
    assert "needs a plugin this Python cannot use" in line
    assert "the run recorded optimizer myoptim:HalfStep" in line

    monkeypatch.syspath_prepend(str(plugin_path))
    plugins.entry_points.cache_clear()
    again = invoke(["reproduce", halfstep.info.run_id])
    assert again.exit_code == 0, again.output
    assert again.output.startswith("identical: ")


def test_a_plugin_that_raises_while_constructing_is_a_failed_run_and_the_sweep_goes_on(
    plugin_path,  # noqa: F811
    experiment_file,
    store_uri,
):
    text = SWEEP.replace("myoptim:HalfStep", "myoptim:Explodes").replace("scale = 0.25\n", "")
    result = invoke(["sweep", experiment_file(text), "--quiet"])
    assert result.exit_code == 1, result.output
    runs = children(store_uri)
    failed = [run for run in runs if run.data.tags["tinytrain.outcome"] == "failed"]
    assert len(runs) == 6 and len(failed) == 2
    assert {run.data.tags["tinytrain.error"] for run in failed} == {"RuntimeError: this optimizer cannot be built"}


def test_the_catalogue_command_lists_installed_plugins_without_importing_them(plugin_path):  # noqa: F811
    result = invoke(["optimizers"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].split() == [
        "halfstep",
        "myoptim:HalfStep",
        "(plugin,",
        "entry",
        "point",
        "of",
        "tinytrain.optimizers)",
    ]
    assert "myoptim" not in sys.modules


def test_gradcheck_and_run_take_a_plugin_problem(plugin_path, store_uri):  # noqa: F811
    options = ["--loss", "cross_entropy", "--batch-size", "4", "--entries", "20", "--tolerance", "1e-3"]
    checked = invoke(["gradcheck", "--problem", "stripes", *options])
    assert checked.exit_code == 0, checked.output
    assert "data: stripes, cross_entropy, a fixed batch of 4" in checked.output
    assert checked.output.strip().endswith("gradcheck passed: every tensor within 0.001")
    misspelt = invoke(["gradcheck", "--problem", "strpes"])
    assert misspelt.exit_code == 2
    assert "unknown problem 'strpes' (did you mean 'stripes'?)" in misspelt.output
    ran = invoke(["run", "--optimizer", "halfstep", "--lr", "0.01", "--steps", "2", "--problem", "stripes"])
    assert ran.exit_code == 0, ran.output
    assert ran.output.startswith("halfstep-lr0.01-seed0: loss ")
