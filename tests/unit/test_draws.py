"""Drawn values: learning rates and variant hyperparameters from a seeded quasi-random sequence, the same on
every expansion, shown by --dry-run, and kept by the resolved experiment file."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from tests.conftest import invoke
from tinytrain.spec import ConfigError, load_experiment, validate
from tinytrain.spec.draws import draw

DRAWN = """# tinytrain sweep drawn.toml
name = "drawn"
steps = 2
[grid]
optimizer = ["adam", "sgd-m"]
lr = { log_uniform = [1e-4, 1.0], count = 5 }
seed = [0]
[optimizers.sgd-m]
type = "sgd"
momentum = { uniform = [0.8, 0.99], count = 3 }
nesterov = true
"""


def test_log_uniform_values_spread_over_the_range_on_a_log_scale():
    values = draw("grid.lr", {"log_uniform": [1e-4, 1.0], "count": 20})
    assert len(values) == 20 == len(set(values)) and values == sorted(values)
    assert all(1e-4 <= value <= 1.0 for value in values)
    logs = [math.log10(value) for value in values]
    assert sum(log < -2 for log in logs) in range(8, 13)  # about half of them below the geometric middle
    assert all(float(f"{value:.4g}") == value for value in values)


def test_draws_are_the_same_on_every_expansion_and_differ_by_seed():
    table = {"uniform": [0.8, 0.99], "count": 4}
    assert draw("x", table) == draw("x", dict(table))
    assert draw("x", {**table, "seed": 1}) != draw("x", table)
    assert all(0.8 <= value <= 0.99 for value in draw("x", table))


def test_a_drawn_grid_lr_expands_like_a_list_with_the_same_keys():
    experiment = load_experiment(text=DRAWN)
    lrs = experiment.grid["lr"]
    assert len(lrs) == 5
    listed = DRAWN.replace("{ log_uniform = [1e-4, 1.0], count = 5 }", repr(lrs))
    assert [s.key for s in load_experiment(text=listed).specs()] == [s.key for s in experiment.specs()]


def test_a_variant_with_a_drawn_hyperparameter_expands_into_one_variant_per_value():
    experiment = load_experiment(text=DRAWN)
    momenta = draw("m", {"uniform": [0.8, 0.99], "count": 3})
    names = [f"sgd-m/momentum={value:g}" for value in momenta]
    assert experiment.grid["optimizer"] == ["adam", *names]
    assert [experiment.variants[name]["momentum"] for name in names] == momenta
    assert all(experiment.variants[name]["nesterov"] for name in names)
    specs = experiment.specs()
    assert len(specs) == 4 * 5 and len({spec.key for spec in specs}) == 20
    assert {dict(s.hyperparameters)["momentum"] for s in specs if s.kind == "sgd"} == set(momenta)


def test_the_resolved_experiment_file_loads_back_to_the_same_sweep():
    experiment = load_experiment(text=DRAWN)
    text = experiment.to_toml()
    assert "# drawn: grid.lr: log_uniform [0.0001, 1.0], count 5" in text
    again = load_experiment("resolved", text=text)
    assert [spec.key for spec in again.specs()] == [spec.key for spec in experiment.specs()]

    def settings_and_tables(toml: str) -> list[str]:
        return [line for line in toml.splitlines() if not line.startswith("#")]

    assert settings_and_tables(again.to_toml()) == settings_and_tables(text)  # the same file once more


def test_a_draw_given_by_set_on_the_command_line():
    experiment = load_experiment(text=DRAWN, overrides=["lr={ log_uniform = [1e-3, 1e-1], count = 3 }"])
    assert len(experiment.grid["lr"]) == 3 and all(1e-3 <= lr <= 1e-1 for lr in experiment.grid["lr"])


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            {"grid": {"lr": {"uniform": [1.0, 0.5], "count": 2}}},
            "grid.lr.uniform must be [low, high] with low < high, got [1.0, 0.5]",
        ),
        ({"grid": {"lr": {"uniform": [0.1, 0.2], "count": 0}}}, "grid.lr.count must be an integer >= 1, got 0"),
        ({"grid": {"lr": {"uniform": [-1, 1], "count": 3}}}, "lr must be a finite number > 0, got -0.8018 in grid.lr"),
        (
            {"optimizers": {"m": {"type": "sgd", "momentum": {"uniform": [-1, -0.5], "count": 2}}}},
            "optimizers.m.momentum must be a finite number >= 0, got -0.9504",
        ),
    ],
)
def test_bad_draws_are_one_line(raw, message):
    with pytest.raises(ConfigError) as error:
        validate(raw)
    assert str(error.value) == message


def test_dry_run_shows_the_drawn_values_and_imports_neither_torch_nor_mlflow(tmp_path):
    path = tmp_path / "drawn.toml"
    path.write_text(DRAWN)
    result = invoke(["sweep", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    lrs = load_experiment(path).grid["lr"]
    assert "drawn grid.lr: log_uniform [0.0001, 1.0], count 5 (scrambled Halton, seed 0" in result.output
    assert "drawn optimizers.sgd-m.momentum: uniform [0.8, 0.99], count 3" in result.output
    assert all(f"lr={lr:<8g}" in result.output for lr in lrs)
    assert "drawn: 20 runs, 20 to run, 0 already done (dry run: nothing written)" in result.output
    code = (
        "import sys; from click.testing import CliRunner; from tinytrain.cli import cli; "
        f"r = CliRunner().invoke(cli, ['sweep', {str(path)!r}, '--dry-run']); "
        "print(r.exit_code, 'torch' in sys.modules, 'mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "0 False False"
