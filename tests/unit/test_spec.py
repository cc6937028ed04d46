"""Experiment files, overrides and validation: every bad input gets its own one-line message."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tinytrain.spec import ConfigError, RunSpec, load_experiment, parse_override, validate

SMALL = """
name = "small"
steps = 3
[grid]
optimizer = ["sgd", "heavy"]
lr = [0.1, 0.01]
seed = [0, 1, 2]
[optimizers.heavy]
type = "sgd"
momentum = 0.9
"""


def test_grid_expands_to_the_cartesian_product_in_order(experiment_file):
    specs = load_experiment(experiment_file(SMALL)).specs()
    assert len(specs) == 2 * 2 * 3
    assert [(s.optimizer, s.lr, s.seed) for s in specs[:4]] == [
        ("sgd", 0.1, 0),
        ("sgd", 0.1, 1),
        ("sgd", 0.1, 2),
        ("sgd", 0.01, 0),
    ]
    heavy = specs[-1]
    assert (heavy.optimizer, heavy.kind, heavy.lr, heavy.seed, heavy.steps) == ("heavy", "sgd", 0.01, 2, 3)
    assert heavy.optimizer_kwargs == {
        "momentum": 0.9,
        "dampening": 0.0,
        "weight_decay": 0.0,
        "nesterov": False,
        "maximize": False,
    }


def test_missing_lr_axis_takes_each_optimizers_torch_default():
    experiment = validate({"grid": {"optimizer": ["adam", "rmsprop"]}})
    assert [(s.optimizer, s.lr) for s in experiment.specs()] == [("adam", 1e-3), ("rmsprop", 1e-2)]


def test_set_overrides_axes_settings_and_variant_hyperparameters(experiment_file):
    experiment = load_experiment(
        experiment_file(SMALL),
        ["steps=10", "lr=0.1,1e-3", "optimizer=heavy", "seed=7", "optimizers.heavy.nesterov=true"],
    )
    specs = experiment.specs()
    assert [(s.optimizer, s.lr, s.seed, s.steps) for s in specs] == [("heavy", 0.1, 7, 10), ("heavy", 1e-3, 7, 10)]
    assert specs[0].optimizer_kwargs["nesterov"] is True


@pytest.mark.parametrize(
    "text, expected",
    [
        ("lr=0.1,0.01", ("lr", [0.1, 0.01])),
        ("optimizer=adam,sgd", ("optimizer", ["adam", "sgd"])),
        ("steps=10", ("steps", [10])),
        ("seed=0, 1", ("seed", [0, 1])),
        ("mkldnn=true", ("mkldnn", [True])),
        ("lr=.5", ("lr", [0.5])),
        ("optimizers.x.betas=[0.9, 0.99]", ("optimizers.x.betas", [[0.9, 0.99]])),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("name=a=b", ("name", ["a=b"])),  # the first '=' splits
        ("lr={ log_uniform = [1e-3, 1e-1], count = 5 }", ("lr", [{"log_uniform": [1e-3, 1e-1], "count": 5}])),
    ],
)
def test_parse_override_of_a_value_with_an_equals_sign_or_an_inline_table(text, expected):
    assert parse_override(text) == expected


# (raw experiment before, --set, raw experiment after): where each kind of key lands, on a raw experiment
# without the table it goes into and on one that has it
APPLIED = [
    ({}, "grid.optimizer=adam,sgd", {"grid": {"optimizer": ["adam", "sgd"]}}),
    ({"grid": {"seed": [0]}}, "lr=0.1", {"grid": {"seed": [0], "lr": [0.1]}}),  # one value: still a list
    ({}, "lr={ log_uniform = [1e-3, 1e-1], count = 5 }", {"grid": {"lr": {"log_uniform": [1e-3, 1e-1], "count": 5}}}),
    ({}, "optimizers.sgd-momentum.momentum=0.5", {"optimizers": {"sgd-momentum": {"momentum": 0.5}}}),
    (
        {"optimizers": {"m": {"type": "sgd"}}},
        "optimizers.m.momentum=0.5",
        {"optimizers": {"m": {"type": "sgd", "momentum": 0.5}}},
    ),
    ({}, "optimizers.my.v2.momentum=0.5", {"optimizers": {"my.v2": {"momentum": 0.5}}}),  # the last '.' splits
    ({}, "steps=10", {"steps": 10}),
]


@pytest.mark.parametrize("before, text, after", APPLIED)
def test_apply_override_puts_each_key_where_it_belongs(before, text, after):
    from tinytrain.spec import apply_override

    apply_override(before, text)
    assert before == after


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "optimizers.momentum=0.5",
            "--set optimizers.momentum: write optimizers.NAME.HYPERPARAMETER=VALUE, e.g. "
            "optimizers.sgd-momentum.momentum=0.5",
        ),
        (
            "optimizers..momentum=0.5",
            "--set optimizers..momentum: write optimizers.NAME.HYPERPARAMETER=VALUE, e.g. "
            "optimizers.sgd-momentum.momentum=0.5",
        ),
        ("optimizers.m.momentum=0.5,0.9", "--set optimizers.m.momentum takes one value, got 2"),
        (
            "name=a,b",
            "--set name takes one value, got 2: only the grid axes (optimizer, lr, seed and steps, data_seed, "
            "target_index, loss, batch_size, schedule, warmup, decay, step_size, gamma, weight_decay, "
            "clip_grad_norm, validation) take a list",
        ),
    ],
)
def test_apply_override_says_what_is_wrong(text, message):
    from tinytrain.spec import apply_override

    with pytest.raises(ConfigError) as error:
        apply_override({}, text)
    assert str(error.value) == message


def test_an_experiment_path_that_is_a_folder_or_not_text_is_one_clear_error(tmp_path):
    from tinytrain.spec import read_experiment_file

    with pytest.raises(ConfigError) as error:
        read_experiment_file(tmp_path)
    assert str(error.value) == f"'{tmp_path}' is a folder: give an experiment TOML file inside it"
    binary = tmp_path / "weights.pt"
    binary.write_bytes(b"\x80\x02\xff\xfe")
    with pytest.raises(ConfigError) as error:
        read_experiment_file(binary)
    assert str(error.value) == f"{binary} is not a text file: give an experiment TOML file"


CATALOGUE = (
    "adadelta, adafactor, adagrad, adam, adamax, adamw, ademamix, adopt, asgd, lion, muon, nadam, prodigy, "
    "radam, rmsprop, rprop, schedulefree-adamw, sgd, soap"
)
BAD_INPUTS = [
    (
        {"grid": {"optimizer": ["adamx"]}},
        f"unknown optimizer 'adamx' in grid.optimizer (did you mean 'adamax'?): use one of {CATALOGUE}, "
        "or define it as [optimizers.adamx] with a type",
    ),
    (
        {"optimizers": {"m": {"type": "sgd", "momentun": 0.9}}, "grid": {"optimizer": ["m"]}},
        "unknown hyperparameter 'momentun' for optimizer 'm' (type sgd) (did you mean 'momentum'?): known ones "
        "are dampening, maximize, "
        "momentum, nesterov, weight_decay",
    ),
    (
        {"stepz": 3},
        "unknown key 'stepz' in <experiment> (did you mean 'steps'?): known keys are batch_size, budget, cells, "
        "checkpoint_every, clip_grad_norm, confirms, data_seed, decay, diverge_above, engine, eta, eval_every, "
        "extra_seeds, first_rung, gamma, grid, loss, mkldnn, name, optimizers, problem, problem_settings, record, "
        "schedule, step_size, steps, target_index, threads, tuning_metric, validation, warmup, weight_decay, writers",
    ),
    ({"grid": {"lr": [0.0]}}, "lr must be a finite number > 0, got 0.0 in grid.lr"),
    ({"grid": {"lr": [-0.1]}}, "lr must be a finite number > 0, got -0.1 in grid.lr"),
    ({"grid": {"lr": [float("inf")]}}, "lr must be a finite number > 0, got inf in grid.lr"),
    ({"grid": {"lr": [float("nan")]}}, "lr must be a finite number > 0, got nan in grid.lr"),
    ({"grid": {"lr": ["fast"]}}, "lr must be a finite number > 0, got 'fast' in grid.lr"),
    ({"steps": 0}, "steps must be an integer >= 1, got 0"),
    ({"steps": 2.5}, "steps must be an integer >= 1, got 2.5"),
    ({"grid": {"seed": []}}, "grid.seed is empty: give at least one value"),
    ({"grid": {"seed": [-1]}}, "seed must be an integer >= 0, got -1 in grid.seed"),
    ({"grid": {"seed": [1, 1]}}, "grid.seed lists 1 more than once: list each value once"),
    (
        {"grid": {"epochs": [1]}},
        "unknown grid axis 'epochs': the axes are optimizer, lr, seed, a setting (steps, data_seed, target_index, "
        "loss, batch_size, schedule, warmup, decay, step_size, gamma, weight_decay, clip_grad_norm, validation) or "
        "a hyperparameter of the optimizers",
    ),
    ({"target_index": 10}, "target_index must be an integer from 0 to 9, got 10"),
    ({"engine": "jax"}, "engine must be one of sequential, vmap, got 'jax'"),
    (
        {"engine": "vmap", "threads": 2},
        "engine vmap runs with threads = 1 and mkldnn = false, where its results "
        "equal the sequential engine's bit for bit: drop the threads/mkldnn settings or use engine sequential",
    ),
    (
        {"optimizers": {"adam": {"type": "adam"}}},
        "[optimizers.adam] redefines the built-in 'adam': give the variant its own name, e.g. [optimizers.adam-custom]",
    ),
    (
        {"optimizers": {"m": {"type": "lbfgs"}}},
        f"optimizers.m has type 'lbfgs': use one of {CATALOGUE}, or a plugin as type = \"package.module:Class\"",
    ),
    (
        {"optimizers": {"m": {"type": "sgd", "lr": 0.1}}},
        "optimizers.m sets lr: the learning rate is a grid axis, set it in [grid]",
    ),
    (
        {"optimizers": {"m": {"type": "sgd", "momentum": -1}}},
        "optimizers.m.momentum must be a finite number >= 0, got -1",
    ),
    (
        {"optimizers": {"m": {"type": "adam", "betas": [0.9]}}},
        "optimizers.m.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got [0.9]",
    ),
    (
        {"optimizers": {"m": {"type": "sgd", "nesterov": True}}},
        "optimizers.m: nesterov needs momentum > 0 and dampening = 0",
    ),
    (
        {"problem": "mnist"},
        "unknown problem 'mnist': use one of one-sample, digits, or a plugin as package.module:Class",
    ),
    (
        {"problem": "digts"},
        "unknown problem 'digts' (did you mean 'digits'?): use one of one-sample, digits, or a plugin as "
        "package.module:Class",
    ),
    ({"loss": "hinge"}, "loss must be one of mse, cross_entropy, got 'hinge'"),
    (
        {"batch_size": 32},
        "batch_size applies to problem digits; one-sample trains on its one input and has no "
        'test set: drop batch_size or set problem = "digits"',
    ),
    ({"problem": "digits", "batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    (
        {"problem": "digits", "batch_size": 2000},
        "batch_size must be at most the 1437 training images of digits, got 2000",
    ),
    (
        {"problem": "digits", "target_index": 5},
        "target_index is the one-sample problem's label; problem digits has its own labels: drop target_index",
    ),
    (
        {"problem": "digits", "engine": "vmap"},
        "engine vmap trains problem one-sample with loss mse only, not "
        "problem digits with loss mse: use engine sequential (--jobs N runs cells in parallel)",
    ),
    (
        {"engine": "vmap", "grid": {"optimizer": ["lion"]}},
        "engine vmap has no stacked update for lion (optimizer "
        "lion): use engine sequential, or one of sgd, adam, adamw, rmsprop, adagrad",
    ),
    (
        {"optimizers": {"m": {"type": "ademamix", "betas": [0.9, 0.999]}}},
        "optimizers.m.betas must be three numbers in [0, 1), e.g. [0.9, 0.999, 0.9999], got [0.9, 0.999]",
    ),
    (
        {"optimizers": {"m": {"type": "adafactor", "beta2_decay": 0.5}}},
        "optimizers.m.beta2_decay must be a finite number <= 0, got 0.5",
    ),
    (
        {"optimizers": {"m": {"type": "muon", "ns_steps": 2.5}}},
        "optimizers.m.ns_steps must be an integer >= 0, got 2.5",
    ),
    (
        {"optimizers": {"m": {"type": "muon", "adjust_lr_fn": "fast"}}},
        "optimizers.m.adjust_lr_fn must be one of original, match_rms_adamw, got 'fast'",
    ),
    (
        {"optimizers": {"m": {"type": "sgd", "nesterov": {"uniform": [0, 1], "count": 2}}}},
        "optimizers.m.nesterov is drawn, but only a number can be (its default is False): give one value",
    ),
    (
        {"grid": {"lr": {"log_uniform": [0, 1], "count": 3}}},
        "grid.lr.log_uniform must be [low, high] with low < high and low > 0, got [0, 1]",
    ),
    ({"grid": {"lr": {"log_uniform": [1e-4, 1.0]}}}, "grid.lr.count must be an integer >= 1, got None"),
    (
        {"grid": {"lr": {"normal": [0, 1], "count": 3}}},
        "grid.lr draws values with one of log_uniform, uniform, a "
        "count and an optional seed, e.g. grid.lr = { log_uniform = [1e-4, 1.0], count = 20 }; got {'normal': [0, 1], "
        "'count': 3}",
    ),
]


@pytest.mark.parametrize("raw, message", BAD_INPUTS)
def test_each_bad_input_has_its_own_message(raw, message):
    with pytest.raises(ConfigError) as error:
        validate(raw)
    assert str(error.value) == message


@pytest.mark.parametrize(
    "text, message",
    [
        ("steps10", "--set 'steps10' must look like KEY=V1,V2 (for example --set lr=0.1,0.01)"),
        ("=3", "--set '=3' must look like KEY=V1,V2 (for example --set lr=0.1,0.01)"),
        ("lr=0.1,", "--set 'lr=0.1,' has an empty value: give values separated by commas, e.g. lr=1,2"),
        (
            "threads=1,2",
            "--set threads takes one value, got 2: only the grid axes (optimizer, lr, seed and steps, data_seed, "
            "target_index, loss, batch_size, schedule, warmup, decay, step_size, gamma, weight_decay, "
            "clip_grad_norm, validation) take a list",
        ),
        (
            "colour=red",
            "--set colour: unknown key; use a grid axis (optimizer, lr, seed), a setting (name, steps, "
            "data_seed, target_index, checkpoint_every, record, threads, mkldnn, engine, problem, loss, batch_size, "
            "eval_every, diverge_above, schedule, warmup, decay, step_size, gamma, weight_decay, clip_grad_norm, "
            "validation, budget, eta, first_rung, tuning_metric, writers) or optimizers.NAME.HYPERPARAMETER",
        ),
    ],
)
def test_bad_overrides(text, message):
    with pytest.raises(ConfigError) as error:
        load_experiment(text="", overrides=[text])
    assert str(error.value) == message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match=r"^experiment file 'nope.toml' does not exist"):
        load_experiment("nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = \n")
    with pytest.raises(ConfigError, match=r"bad.toml is not valid TOML: .*line 1"):
        load_experiment(bad)


def test_every_experiment_file_loads_and_validates():
    files = sorted((PROJECT_ROOT / "experiments").glob("*.toml"))
    assert {f.name for f in files} >= {"optimizer-grid.toml", "one-step-adam.toml"}
    for path in files:
        experiment = load_experiment(path)
        assert experiment.specs(), path
        assert path.read_text().startswith("# tinytrain sweep"), f"{path} must say how to run it"


def test_default_grid_is_45_runs_of_100_steps():
    specs = load_experiment(PROJECT_ROOT / "experiments" / "optimizer-grid.toml").specs()
    assert len(specs) == 45 and {s.steps for s in specs} == {100}
    assert {s.optimizer for s in specs} == {"sgd", "sgd-momentum", "adam", "adamw", "rmsprop"}
    one_step = load_experiment(PROJECT_ROOT / "experiments" / "one-step-adam.toml").specs()
    assert [(s.optimizer, s.lr, s.steps) for s in one_step] == [("adam", 1e-3, 1)] * 10
    assert [s.seed for s in one_step] == list(range(10))


def test_resolved_toml_loads_back_to_the_same_specs(experiment_file):
    experiment = load_experiment(experiment_file(SMALL), ["lr=1e-05,0.5"])
    again = load_experiment(text=experiment.to_toml())
    assert again.specs() == experiment.specs()
    assert [s.key for s in again.specs()] == [s.key for s in experiment.specs()]


def test_spec_round_trips_through_its_logged_params(experiment_file):
    for spec in load_experiment(experiment_file(SMALL), ["optimizer=heavy,sgd"]).specs():
        assert RunSpec.from_params(spec.params()) == spec
    for kind in ("adam", "adamw", "rmsprop", "adagrad"):
        spec = validate({"grid": {"optimizer": [kind]}}).specs()[0]
        assert RunSpec.from_params(spec.params()) == spec


def test_run_key_is_stable_across_processes_and_changes_with_every_field():
    spec = validate({"grid": {"optimizer": ["adam"], "lr": [1e-3], "seed": [0]}}).specs()[0]
    code = (
        "from tinytrain.spec import validate; "
        "print(validate({'grid': {'optimizer': ['adam'], 'lr': [1e-3], 'seed': [0]}}).specs()[0].key)"
    )
    other_process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other_process.stdout.strip() == spec.key
    variations = [
        {"grid": {"optimizer": ["adamw"], "lr": [1e-3], "seed": [0]}},
        {"grid": {"optimizer": ["adam"], "lr": [1e-2], "seed": [0]}},
        {"grid": {"optimizer": ["adam"], "lr": [1e-3], "seed": [1]}},
        {"steps": 7, "grid": {"optimizer": ["adam"], "lr": [1e-3], "seed": [0]}},
        {"data_seed": 1, "grid": {"optimizer": ["adam"], "lr": [1e-3], "seed": [0]}},
        {"target_index": 0, "grid": {"optimizer": ["adam"], "lr": [1e-3], "seed": [0]}},
        {"threads": 2, "grid": {"optimizer": ["adam"], "lr": [1e-3], "seed": [0]}},
        {"mkldnn": True, "grid": {"optimizer": ["adam"], "lr": [1e-3], "seed": [0]}},
        {"engine": "vmap", "grid": {"optimizer": ["adam"], "lr": [1e-3], "seed": [0]}},
        {"diverge_above": 1e6, "grid": {"optimizer": ["adam"], "lr": [1e-3], "seed": [0]}},
        {"optimizers": {"a2": {"type": "adam", "eps": 1e-6}}, "grid": {"optimizer": ["a2"], "lr": [1e-3]}},
    ]
    keys = {validate(raw).specs()[0].key for raw in variations}
    assert spec.key not in keys and len(keys) == len(variations)
    # checkpoints change what is saved, not what is computed: same cell, same key
    assert validate({"checkpoint_every": 5, "grid": {"optimizer": ["adam"], "lr": [1e-3]}}).specs()[0].key == spec.key


def test_params_name_every_hyperparameter_actually_used():
    spec = validate({"grid": {"optimizer": ["adam"]}}).specs()[0]
    params = spec.params()
    assert {k: params[k] for k in ("optimizer", "lr", "seed", "steps", "data_seed", "target_index")} == {
        "optimizer": "adam",
        "lr": "0.001",
        "seed": "0",
        "steps": "100",
        "data_seed": "0",
        "target_index": "3",
    }
    assert {k: params[k] for k in ("betas", "eps", "weight_decay", "amsgrad")} == {
        "betas": "(0.9, 0.999)",
        "eps": "1e-08",
        "weight_decay": "0.0",
        "amsgrad": "False",
    }
    json.dumps(params)  # all strings


def test_optimizer_table_matches_the_signatures_of_torch_and_pytorch_optimizer():
    """Every default of the catalogue is the implementation's own; every mathematical argument is offered."""
    import importlib
    import inspect

    import torch

    from tinytrain.optimizers import OPTIMIZERS

    implementation_switches = {
        "params",
        "lr",
        "foreach",
        "fused",
        "capturable",
        "differentiable",
        "kwargs",
        "clip_lambda",
    }  # clip_lambda: ADOPT's clipping schedule, a function
    for kind, (class_path, default_lr, defaults) in OPTIMIZERS.items():
        module, _, class_name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module) if module else torch.optim, class_name)
        signature = inspect.signature(cls).parameters
        assert signature["lr"].default == default_lr, kind
        own = {name: value for name, value in defaults.items() if not name.startswith("adamw_")}
        for name, value in own.items():
            assert signature[name].default == value, f"{kind}.{name}"
        assert set(signature) - implementation_switches == set(own), kind
        if kind == "muon":  # AdamW trains what Muon does not: its defaults are AdamW's
            adamw = inspect.signature(torch.optim.AdamW).parameters
            for name, value in defaults.items():
                if name.startswith("adamw_"):
                    assert adamw[name.removeprefix("adamw_")].default == value, name


def test_spec_module_imports_neither_torch_nor_mlflow():
    code = (
        "import sys, tinytrain.cli, tinytrain.spec; "
        "print('torch' in sys.modules, 'mlflow' in sys.modules, 'scipy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd())
    assert out.stdout.strip() == "False False False"  # nor scipy, which compare's statistics import


def test_a_run_recorded_before_diverge_above_keeps_its_key_and_gets_no_bound():
    """be6c6834c7cac03a is the key tinytrain gave adam lr 1e-3 seed 0 before the bound existed; a recorded
    experiment file without diverge_above (written then) loads with no bound, and so gives that key."""
    from dataclasses import replace

    spec = validate({"grid": {"optimizer": ["adam"], "lr": [1e-3], "seed": [0]}}).specs()[0]
    assert spec.diverge_above == 1e3 and spec.params()["diverge_above"] == "1000.0"
    legacy = replace(spec, diverge_above=None)
    assert legacy.key == "be6c6834c7cac03a" != spec.key
    params = {name: value for name, value in spec.params().items() if name != "diverge_above"}
    assert RunSpec.from_params(params) == legacy
    old_file = "\n".join(line for line in validate({}).to_toml().splitlines() if "diverge_above" not in line)
    assert load_experiment(text=old_file, recorded=True).specs()[0].diverge_above is None
    assert load_experiment(text=old_file).specs()[0].diverge_above == 1e3  # a file a user wrote: the default


@pytest.mark.parametrize("value", [1, 0.5, "big", float("nan")])
def test_diverge_above_must_be_a_number_above_one(value):
    with pytest.raises(ConfigError, match="diverge_above must be a number > 1"):
        validate({"diverge_above": value})


def test_from_params_round_trips_every_setting_that_differs_from_its_default():
    """Survivors of make mutation: with defaults only, a from_params that dropped threads, mkldnn or
    checkpoint_every (which == leaves out) still passed."""
    from dataclasses import asdict

    spec = validate(
        {
            "steps": 7,
            "threads": 2,
            "mkldnn": True,
            "checkpoint_every": 5,
            "data_seed": 3,
            "target_index": 1,
            "grid": {"optimizer": ["sgd"], "lr": [0.5], "seed": [4]},
        }
    ).specs()[0]
    back = RunSpec.from_params(spec.params())
    assert asdict(back) == asdict(spec) and back.key == spec.key
    assert (back.threads, back.mkldnn, back.checkpoint_every) == (2, True, 5)
    # every other setting off its default: the engine, the bound, and the digits problem's own settings
    others = [
        {"engine": "vmap", "diverge_above": math.inf, "grid": {"optimizer": ["adamw"], "lr": [0.02], "seed": [1]}},
        {
            "problem": "digits",
            "loss": "cross_entropy",
            "batch_size": 32,
            "eval_every": 10,
            "diverge_above": 50.0,
            "grid": {"optimizer": ["rmsprop"], "lr": [0.003], "seed": [2]},
        },
    ]
    for raw in others:
        spec = validate(raw).specs()[0]
        back = RunSpec.from_params(spec.params())
        assert asdict(back) == asdict(spec) and back.key == spec.key
        settings = {key: value for key, value in raw.items() if key != "grid"}
        assert {key: getattr(back, key) for key in settings} == settings


def test_from_params_of_a_run_logged_before_the_later_settings_gives_their_defaults():
    """A run logged before checkpoint_every, the bound, problems, losses and batches were settings: its params
    lack them, and the spec rebuilt from them has each one's default (the bound: none)."""
    spec = validate({"steps": 5, "grid": {"optimizer": ["adam"], "lr": [0.01], "seed": [0]}}).specs()[0]
    params = {
        key: value
        for key, value in spec.params().items()
        if key not in ("checkpoint_every", "diverge_above", "problem", "loss", "batch_size", "eval_every")
    }
    back = RunSpec.from_params(params)
    assert back.diverge_above is None and back.checkpoint_every == 0
    assert (back.problem, back.loss, back.batch_size, back.eval_every) == ("one-sample", "mse", 64, 50)
    assert (back.optimizer, back.lr, back.seed, back.steps) == ("adam", 0.01, 0, 5)


def test_the_default_experiment_file_of_the_current_folder_comes_first(tmp_path, monkeypatch):
    from tinytrain.spec import default_experiment_path

    monkeypatch.chdir(tmp_path)
    assert default_experiment_path() == PROJECT_ROOT / "experiments" / "optimizer-grid.toml"
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "optimizer-grid.toml").write_text('name = "local-grid"\n')
    assert default_experiment_path() == Path("experiments/optimizer-grid.toml")
    assert load_experiment().name == "local-grid"


# ---------------------------------------------------------------------------------------------------------
# [extra_seeds]: more seeds for cells of the grid (written by --until-separated)

GRID_OF_TWO = {"grid": {"optimizer": ["adam", "sgd"], "lr": [0.01, 0.1], "seed": [0, 1]}}


def test_extra_seeds_add_runs_to_their_cells_only_and_leave_out_the_grids_own_seeds():
    experiment = validate({**GRID_OF_TWO, "extra_seeds": {"adam@0.01": [1, 5, 3], "sgd@0.1": [2]}})
    assert experiment.extra_seeds == {("adam", 0.01): (3, 5), ("sgd", 0.1): (2,)}  # seed 1 is the grid's
    specs = experiment.specs()
    assert len(specs) == 8 + 3
    assert [(spec.optimizer, spec.lr, spec.seed) for spec in specs[8:]] == [
        ("adam", 0.01, 3),
        ("adam", 0.01, 5),
        ("sgd", 0.1, 2),
    ]
    assert validate(GRID_OF_TWO).extra_seeds == {}


@pytest.mark.parametrize(
    "extra",
    [
        {"adam@0.5": [3]},  # no such cell
        {"rmsprop@0.01": [3]},
        {"adam": [3]},
        {"adam@0.01": 3},  # not a list
        {"adam@0.01": [-1]},
        {"adam@0.01": [1.5]},
        {"adam@0.01": [True]},
        {"adam@0.01": [0, "two"]},
    ],
)
def test_extra_seeds_that_name_no_cell_of_the_grid_or_no_seeds_are_one_clear_error(extra):
    (name,) = extra
    with pytest.raises(ConfigError) as error:
        validate({**GRID_OF_TWO, "extra_seeds": extra})
    assert str(error.value) == f'extra_seeds.{name} must name a cell of the grid as "OPTIMIZER@LR" = [seeds >= 0]'


def test_extra_seeds_that_are_not_a_table_are_one_clear_error():
    with pytest.raises(ConfigError) as error:
        validate({**GRID_OF_TWO, "extra_seeds": ["adam@0.01"]})
    assert (
        str(error.value) == "extra_seeds.['adam@0.01'] must name a cell of the grid as \"OPTIMIZER@LR\" = [seeds >= 0]"
    )


def test_seed_zero_is_a_valid_extra_seed():
    experiment = validate(
        {"grid": {"optimizer": ["adam"], "lr": [0.01], "seed": [1]}, "extra_seeds": {"adam@0.01": [0]}}
    )
    assert experiment.extra_seeds == {("adam", 0.01): (0,)}


def test_a_muon_run_records_which_parameters_each_of_its_optimizers_trains():
    from tinytrain.optimizers import ADAMW_WITH_MUON, MUON_PARAMETERS

    muon = validate({"grid": {"optimizer": ["muon"], "lr": [0.02], "seed": [0]}}).specs()[0].params()
    assert muon["muon_parameters"] == "fc1.weight,fc2.weight" == ",".join(MUON_PARAMETERS)
    assert muon["adamw_parameters"].split(",") == list(ADAMW_WITH_MUON) and len(ADAMW_WITH_MUON) == 8
    adam = validate({"grid": {"optimizer": ["adam"], "lr": [0.02], "seed": [0]}}).specs()[0].params()
    assert "muon_parameters" not in adam and "adamw_parameters" not in adam
    assert "batch_size" not in adam and "eval_every" not in adam  # one-sample has no batches
    digits = validate({"problem": "digits", "grid": {"optimizer": ["adam"], "lr": [0.02], "seed": [0]}})
    assert {key: digits.specs()[0].params()[key] for key in ("batch_size", "eval_every")} == {
        "batch_size": "64",
        "eval_every": "50",
    }


def test_to_toml_keeps_the_draws_the_settings_and_the_extra_seeds():
    experiment = load_experiment(
        text='steps = 4\nmkldnn = true\n[grid]\noptimizer = ["adam"]\n'
        "lr = { log_uniform = [1e-3, 1e-1], count = 2 }\nseed = [0]\n"
    )
    experiment = validate(
        {**tomllib.loads(experiment.to_toml()), "extra_seeds": {f"adam@{experiment.grid['lr'][0]!r}": [3]}},
        experiment.source,
    )
    text = experiment.to_toml()
    lines = text.splitlines()
    assert lines[0].startswith("# tinytrain sweep --from-run <this run>   (resolved from ")
    assert "mkldnn = true" in lines and "steps = 4" in lines
    assert lines[-2:] == ["[extra_seeds]", f'"adam@{experiment.grid["lr"][0]!r}" = [3]'] and lines[-3] == ""
    again = load_experiment(text=text)
    assert again.specs() == experiment.specs() and len(again.specs()) == 3
    drawn = load_experiment(text='[grid]\noptimizer = ["adam"]\nlr = { log_uniform = [1e-3, 1e-1], count = 2 }\n')
    assert drawn.drawn and drawn.to_toml().splitlines()[1] == f"# drawn: {drawn.drawn[0]}"
    assert drawn.drawn[0].startswith("grid.lr: ")


def load_error(source) -> str:
    """The message of the ConfigError that loading an experiment (a path, or text) raises."""
    with pytest.raises(ConfigError) as error:
        load_experiment(source) if isinstance(source, Path) else load_experiment(text=source)
    return str(error.value)


def test_bad_toml_and_a_grid_that_is_not_a_table_are_one_exact_line(tmp_path):
    assert load_error("steps = [\n").startswith("<text> is not valid TOML: ")
    bad, unknown = tmp_path / "bad.toml", tmp_path / "unknown.toml"
    bad.write_text("steps = [\n")
    unknown.write_text("stepz = 1\n")
    assert load_error(bad).startswith(f"{bad} is not valid TOML: ")
    assert load_error(unknown).startswith(f"unknown key 'stepz' in {unknown} (did you mean 'steps'?): ")
    assert load_error('grid = "adam"\n') == "grid must be a table: write [grid] with optimizer, lr and seed lists"
    assert load_error("[grid]\nseed = [1, 2, 1, 2]\n") == "grid.seed lists 1, 2 more than once: list each value once"


def test_a_drawn_variant_expands_in_the_optimizer_axis_and_its_names_join_the_unknown_optimizer_message():
    raw = {
        "optimizers": {"m": {"type": "sgd", "momentum": {"uniform": [0.1, 0.9], "count": 2}}},
        "grid": {"optimizer": ["m"], "lr": [0.01], "seed": 3},
    }  # a single seed needs no list
    experiment = validate(raw)
    names = experiment.grid["optimizer"]
    assert len(names) == 2 and all(name.startswith("m") and name != "m" for name in names)
    assert [spec.seed for spec in experiment.specs()] == [3, 3] and experiment.grid["lr"] == [0.01]
    assert (
        experiment.to_toml().splitlines()[0] == "# tinytrain sweep --from-run <this run>   (resolved from <experiment>)"
    )
    with pytest.raises(ConfigError) as error:
        validate(
            {
                "optimizers": {"heavy": {"type": "sgd", "momentum": 0.9}, **raw["optimizers"]},
                "grid": {"optimizer": ["adamx"]},
            }
        )
    listed = ", ".join(["heavy", "m", *sorted(names)])  # the variants, and what the drawn one expands into
    assert str(error.value).endswith(f", soap, {listed}, or define it as [optimizers.adamx] with a type")


def test_engine_vmap_takes_a_variant_by_its_type():
    experiment = validate(
        {
            "engine": "vmap",
            "optimizers": {"heavy": {"type": "sgd", "momentum": 0.9}},
            "grid": {"optimizer": ["heavy"], "lr": [0.01]},
        }
    )
    assert experiment.specs()[0].kind == "sgd"


def test_a_recorded_experiment_keeps_its_bound_and_one_without_it_has_none():
    recorded = validate({"diverge_above": 50.0, "grid": {"optimizer": ["adam"]}}).to_toml()
    assert load_experiment(text=recorded, recorded=True).specs()[0].diverge_above == 50.0
    old = "\n".join(line for line in recorded.splitlines() if not line.startswith("diverge_above"))
    assert load_experiment(text=old, recorded=True).specs()[0].diverge_above is None


# ---------------------------------------------------------------------------------------------------------
# The recipe and any setting as a grid axis


def test_keys_written_before_the_recipe_settings_stay_the_same():
    """The keys main gave these cells before schedule, weight_decay, clip_grad_norm and validation existed
    (computed with that code): a setting at its default does not enter the key."""
    from tinytrain.spec import PROJECT_ROOT

    grid = load_experiment(PROJECT_ROOT / "experiments/optimizer-grid.toml").specs()
    digits = load_experiment(PROJECT_ROOT / "experiments/digits-grid.toml").specs()
    assert [spec.key for spec in grid[:2]] == ["2471ad22449aebe4", "ff36b8100ef7efc6"]
    assert [spec.key for spec in digits[:2]] == ["226647b7b8ff814a", "05598dd38da3675a"]
    with_defaults = load_experiment(
        PROJECT_ROOT / "experiments/optimizer-grid.toml",
        ["schedule=constant", "clip_grad_norm=0", "warmup=10", "validation=0"],
    )
    assert [spec.key for spec in with_defaults.specs()] == [spec.key for spec in grid]


def test_every_setting_axis_is_a_column_of_the_cell_a_param_and_part_of_the_key():
    raw = {
        "steps": 20,
        "warmup": 0.1,
        "grid": {
            "optimizer": ["adam", "sgd"],
            "lr": [0.01],
            "schedule": ["constant", "warmup-cosine"],
            "weight_decay": [0.0, 0.01],
            "clip_grad_norm": [0, 1.0],
            "steps": [20, 30],
        },
    }
    experiment = validate(raw)
    specs = experiment.specs()
    assert len(specs) == 2 * 2 * 2 * 2 * 2 and len({spec.key for spec in specs}) == len(specs)
    assert experiment.axes == ("schedule", "weight_decay", "clip_grad_norm", "steps")
    spec = next(s for s in specs if s.schedule == "warmup-cosine" and s.clip_grad_norm == 1.0 and s.steps == 30)
    assert experiment.arm(spec)[0] == ("schedule", "warmup-cosine")
    params = spec.params()
    assert {k: params[k] for k in ("schedule", "warmup", "clip_grad_norm", "steps")} == {
        "schedule": "warmup-cosine",
        "warmup": "0.1",
        "clip_grad_norm": "1.0",
        "steps": "30",
    }
    assert "weight_decay" in params and RunSpec.from_params(params) == spec
    constant = next(s for s in specs if s.schedule == "constant")
    assert constant.warmup == 0 and "warmup" not in constant.params()  # a constant lr reads no warmup
    again = load_experiment(text=experiment.to_toml())
    assert [s.key for s in again.specs()] == [s.key for s in specs]


def test_a_warmup_axis_under_a_schedule_without_warmup_gives_one_cell_not_one_per_warmup():
    experiment = validate({"grid": {"schedule": ["constant", "warmup"], "warmup": [5, 10]}})
    assert [(spec.schedule, spec.warmup) for spec in experiment.specs()] == [
        ("constant", 0),
        ("warmup", 5),
        ("warmup", 10),
    ]


def test_a_hyperparameter_shared_by_several_variants_is_an_axis():
    raw = {
        "optimizers": {
            "heavy": {"type": "sgd", "momentum": 0.9},
            "nest": {"type": "sgd", "nesterov": True, "momentum": 0.5},
        },
        "grid": {"optimizer": ["adam", "adamw"], "betas": [[0.9, 0.999], [0.95, 0.99]]},
    }
    experiment = validate(raw)
    assert [spec.optimizer_kwargs["betas"] for spec in experiment.specs()] == [(0.9, 0.999), (0.95, 0.99)] * 2
    with pytest.raises(ConfigError, match="grid.momentum: optimizer 'adam' \\(type adam\\) takes no momentum"):
        validate({"grid": {"optimizer": ["adam"], "momentum": [0.5]}})
    with pytest.raises(ConfigError, match="grid.momentum: variant 'heavy' fixes momentum itself"):
        validate({**raw, "grid": {"optimizer": ["heavy"], "momentum": [0.5]}})


def test_each_optimizer_has_its_own_lr_range_listed_or_drawn():
    raw = {
        "grid": {
            "optimizer": ["adam", "sgd"],
            "lr": {"adam": [1e-4, 1e-3], "sgd": {"log_uniform": [0.01, 1.0], "count": 3}},
            "seed": [0, 1],
        }
    }
    experiment = validate(raw)
    lrs = {}
    for spec in experiment.specs():
        lrs.setdefault(spec.optimizer, set()).add(spec.lr)
    assert lrs["adam"] == {1e-4, 1e-3} and len(lrs["sgd"]) == 3 and all(0.01 <= lr <= 1 for lr in lrs["sgd"])
    assert len(experiment.specs()) == (2 + 3) * 2
    assert any(line.startswith("grid.lr.sgd: log_uniform") for line in experiment.drawn)
    again = load_experiment(text=experiment.to_toml())
    assert [s.key for s in again.specs()] == [s.key for s in experiment.specs()]
    alone = validate({"grid": {"lr": {"adamw": [0.001], "sgd": [0.1]}}})  # the table names the optimizers
    assert [(s.optimizer, s.lr) for s in alone.specs()] == [("adamw", 0.001), ("sgd", 0.1)]
    with pytest.raises(ConfigError, match="grid.lr has no learning rates for optimizer 'sgd': add \"sgd\""):
        validate({"grid": {"optimizer": ["adam", "sgd"], "lr": {"adam": [0.1]}}})
    with pytest.raises(ConfigError, match="grid.lr.adamm names no optimizer of grid.optimizer \\(did you mean 'adam'"):
        validate({"grid": {"optimizer": ["adam"], "lr": {"adam": [0.1], "adamm": [0.1]}}})


def test_a_huge_grid_is_refused_before_anything_is_drawn():
    import time

    started = time.perf_counter()
    with pytest.raises(ConfigError) as error:
        validate({"grid": {"lr": {"log_uniform": [0.001, 0.1], "count": 100_000_000}}})
    assert time.perf_counter() - started < 1
    assert str(error.value) == (
        "the grid has 100,000,000 cells, more than 1,000,000: check the counts and lists of [grid] "
        "(or pass --allow-huge to sweep it anyway)"
    )
    with pytest.raises(ConfigError, match="the grid has 2,000,000 cells"):
        validate({"grid": {"seed": list(range(1000)), "lr": {"uniform": [0.1, 1], "count": 2000}}})
    assert len(validate({"grid": {"seed": list(range(1001)), "lr": [0.1] * 1}}).specs()) == 1001


def test_an_unquoted_dotted_variant_name_says_how_to_quote_it():
    import tomllib

    raw = tomllib.loads('[optimizers.adam.wd]\ntype = "adamw"\n[grid]\noptimizer = ["adam.wd"]\n')
    with pytest.raises(ConfigError) as error:
        validate(raw)
    assert str(error.value) == (
        "[optimizers.adam.wd] is read as a table 'wd' inside 'adam': quote a dotted variant name, "
        '[optimizers."adam.wd"], or name it adam-wd'
    )
    quoted = tomllib.loads('[optimizers."adam.wd"]\ntype = "adamw"\n[grid]\noptimizer = ["adam.wd"]\n')
    assert validate(quoted).specs()[0].kind == "adamw"


def test_misspelt_names_get_a_did_you_mean():
    for raw, hint in [
        ({"schedul": "cosine"}, "(did you mean 'schedule'?)"),
        ({"grid": {"weight_decai": [0.1]}}, "(did you mean 'weight_decay'?)"),
        ({"schedule": "warmup-cosin", "warmup": 5}, "(did you mean 'warmup-cosine'?)"),
        ({"grid": {"optimizer": ["adamw2"]}}, "(did you mean 'adamw'?)"),
    ]:
        with pytest.raises(ConfigError) as error:
            validate(raw)
        assert hint in str(error.value) and "\n" not in str(error.value)


def test_set_with_several_values_of_a_setting_makes_it_a_grid_axis():
    experiment = load_experiment(text="", overrides=["weight_decay=0,0.01", "schedule=constant,cosine"])
    assert experiment.axes == ("weight_decay", "schedule") and len(experiment.specs()) == 4


def test_extra_seeds_name_cells_with_their_other_axes():
    raw = {"grid": {"optimizer": ["adam"], "lr": [0.01], "schedule": ["constant", "cosine"]}}
    experiment = validate({**raw, "extra_seeds": {"adam@0.01[schedule=cosine]": [3]}})
    assert experiment.extra_seeds == {("adam", 0.01, ("schedule", "cosine")): (3,)}
    assert [(s.schedule, s.seed) for s in experiment.specs()] == [("constant", 0), ("cosine", 0), ("cosine", 3)]
    again = load_experiment(text=experiment.to_toml())
    assert again.extra_seeds == experiment.extra_seeds


def test_batch_size_loss_and_validation_are_axes_of_a_digits_grid():
    experiment = validate(
        {
            "problem": "digits",
            "grid": {"batch_size": [32, 64], "loss": ["mse", "cross_entropy"], "validation": [0.0, 0.2]},
        }
    )
    specs = experiment.specs()
    assert len({spec.key for spec in specs}) == 8 and experiment.axes == ("batch_size", "loss", "validation")
    assert {(s.batch_size, s.loss, s.validation) for s in specs} == {
        (b, loss, v) for b in (32, 64) for loss in ("mse", "cross_entropy") for v in (0.0, 0.2)
    }
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1, got 0"):
        validate({"problem": "digits", "grid": {"batch_size": [32, 0]}})


def test_writers_is_a_setting_outside_the_run_key_and_auto_counts_the_cores_training_leaves_free():
    from tinytrain.spec.settings import MAX_AUTO_WRITERS, writer_count

    plain = [spec.key for spec in load_experiment(None, []).specs()]
    assert [spec.key for spec in load_experiment(None, ["writers=3"]).specs()] == plain
    assert load_experiment(None, ["writers=3"]).settings["writers"] == 3
    assert writer_count("auto", 1, cores=2) == 1  # this machine: one core trains, one writes
    assert writer_count("auto", 2, cores=2) == 1  # at least one
    assert writer_count("auto", 12, cores=16) == 4
    assert writer_count("auto", 1, cores=16) == MAX_AUTO_WRITERS
    assert writer_count(3, 1, cores=2) == 3  # asked for: as many as asked
    for bad in ("writers=0", "writers=-1", "writers=two", "writers=1.5"):
        with pytest.raises(ConfigError, match="writers must be an integer >= 1 or auto"):
            load_experiment(None, [bad])


# ---------------------------------------------------------------------------------------------------------
# record: what a run keeps of its weights, never what it computes


@pytest.mark.parametrize("record", ["model", "weights", "none"])
def test_the_record_policy_never_enters_a_run_key(record):
    """The keys main wrote before `record` existed (the ones above, computed with that code) are the keys of
    every policy: a sweep at any record finds the cells of one at another, and old stores keep resuming."""
    from tinytrain.spec import PROJECT_ROOT

    grid = load_experiment(PROJECT_ROOT / "experiments/optimizer-grid.toml", [f"record={record}"]).specs()
    digits = load_experiment(PROJECT_ROOT / "experiments/digits-grid.toml", [f"record={record}"]).specs()
    assert [spec.key for spec in grid[:2]] == ["2471ad22449aebe4", "ff36b8100ef7efc6"]
    assert [spec.key for spec in digits[:2]] == ["226647b7b8ff814a", "05598dd38da3675a"]
    assert {spec.record for spec in grid} == {record}
    assert grid[0].params()["record"] == record  # a param of every run, read back by reproduce
    assert RunSpec.from_params(grid[0].params()).record == record


def test_a_run_logged_before_the_record_setting_kept_a_logged_model():
    (spec,) = load_experiment(text="", overrides=["record=none"]).specs()
    params = {key: value for key, value in spec.params().items() if key != "record"}
    assert RunSpec.from_params(params).record == "model"


def test_an_unknown_record_policy_is_refused_in_one_line():
    with pytest.raises(ConfigError) as error:
        load_experiment(text="", overrides=["record=weight"])
    assert str(error.value) == "record must be one of model, weights, none, got 'weight' (did you mean 'weights'?)"
