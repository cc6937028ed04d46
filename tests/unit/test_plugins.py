"""Plugins in this process: optimizers and problems by import path and by entry point, checked against their
signatures, recorded, read back without importing them, trained, and refused in one line when they cannot be.

Plugin modules are real files in a temporary folder put on sys.path; an entry point is a real dist-info
folder beside them, which importlib.metadata finds on that path like any installed distribution.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from tinytrain import plugins
from tinytrain.errors import ConfigError
from tinytrain.spec import RunSpec, load_experiment

OPTIMIZER_MODULE = '''
import torch


class HalfStep(torch.optim.Optimizer):
    """p <- p - lr * scale * sign(g), with an integer and a tuple knob to check types."""

    def __init__(self, params, lr=0.01, scale=0.5, every=1, bounds=(0.0, 1.0), flavour="plain", foreach=None):
        super().__init__(params, {"lr": lr, "scale": scale})
        self.every, self.bounds, self.flavour = every, bounds, flavour

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    parameter.add_(torch.sign(parameter.grad), alpha=-group["lr"] * group["scale"])


class Counts(torch.optim.Optimizer):
    """A hyperparameter whose name is also one of the run's own params (steps)."""

    def __init__(self, params, lr=0.1, steps=3):
        super().__init__(params, {"lr": lr})

    def step(self, closure=None):
        pass


class NeedsBeta(torch.optim.Optimizer):
    def __init__(self, params, beta, lr=0.1):
        super().__init__(params, {"lr": lr})

    def step(self, closure=None):
        pass


class Explodes(torch.optim.Optimizer):
    def __init__(self, params, lr=0.1):
        raise RuntimeError("this optimizer cannot be built")


def a_function():
    pass
'''

PROBLEM_MODULE = '''
import torch
from torch import nn


class Stripes:
    """Two classes: horizontal or vertical stripes, with noise; an MLP of its own when asked."""

    has_test_set = True

    def __init__(self, data_seed, batch_size, noise=0.1, width=4, own_net=False):
        generator = torch.Generator().manual_seed(data_seed)
        labels = torch.randint(2, (64,), generator=generator)
        rows = (torch.arange(32) // width % 2).float()
        images = torch.where(labels[:, None, None] == 0, rows[:, None].expand(32, 32), rows[None, :].expand(32, 32))
        self.images = images[:, None] + noise * torch.randn(64, 1, 32, 32, generator=generator)
        self.labels, self.batch_size, self.own_net = labels, batch_size, own_net

    def batches(self, seed):
        generator = torch.Generator().manual_seed(seed)
        while True:
            index = torch.randint(64, (self.batch_size,), generator=generator)
            yield self.images[index], self.labels[index]

    def fixed_batch(self):
        return self.images[: self.batch_size], self.labels[: self.batch_size]

    def evaluate(self, net, loss):
        with torch.no_grad():
            return {"test_loss": loss(net(self.images), self.labels).item()}

    def model(self):
        if self.own_net:
            return nn.Sequential(nn.Flatten(), nn.Linear(1024, 10))
        from tinytrain.model import LeNet

        return LeNet()
'''


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """A folder on sys.path with the plugin modules and a distribution registering entry points."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "myoptim.py").write_text(OPTIMIZER_MODULE)
    (folder / "myproblem.py").write_text(PROBLEM_MODULE)
    (folder / "notorch.py").write_text("class Plain:\n    pass\n")
    (folder / "broken.py").write_text("1 / 0\n")
    info = folder / "my_plugins-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugins\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(
        "[tinytrain.optimizers]\nhalfstep = myoptim:HalfStep\n\n[tinytrain.problems]\nstripes = myproblem:Stripes\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    plugins.entry_points.cache_clear()
    yield folder
    plugins.entry_points.cache_clear()
    for name in ("myoptim", "myproblem", "notorch", "broken"):
        sys.modules.pop(name, None)


def experiment(text: str, **options):
    return load_experiment(text=textwrap.dedent(text), **options)


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as error:
        experiment(text)
    message = str(error.value)
    assert "\n" not in message
    return message


GRID = """
steps = 3
[grid]
optimizer = ["mine"]
lr = [0.01]
[optimizers.mine]
type = "myoptim:HalfStep"
"""


def test_an_import_path_optimizer_takes_its_defaults_from_its_signature_and_logs_every_one(plugin_path):
    (spec,) = experiment(GRID + "scale = 0.25\nbounds = [0, 2]\n").specs()
    assert spec.kind == "myoptim:HalfStep"
    # foreach is an implementation switch: not offered; every other keyword, with its default unless set
    assert dict(spec.hyperparameters) == {"scale": 0.25, "every": 1, "bounds": (0.0, 2.0), "flavour": "plain"}
    params = spec.params()
    assert (params["scale"], params["every"], params["bounds"], params["flavour"]) == (
        "0.25",
        "1",
        "(0.0, 2.0)",
        "plain",
    )
    assert json.loads(params["plugin_hyperparameters"]) == {
        "bounds": [0.0, 2.0],
        "every": 1,
        "flavour": "plain",
        "scale": 0.25,
    }
    rebuilt = RunSpec.from_params(params)
    assert rebuilt == spec and rebuilt.key == spec.key


def test_a_plugins_default_lr_is_its_signatures(plugin_path):
    (spec,) = experiment(GRID.replace("lr = [0.01]\n", "")).specs()
    assert spec.lr == 0.01


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            "scal = 0.3\n",
            "unknown hyperparameter 'scal' for optimizer 'mine' (type myoptim:HalfStep) (did you mean 'scale'?): "
            "known ones are bounds, every, flavour, scale",
        ),
        ("every = 1.5\n", "optimizers.mine.every must be an integer (its default is 1), got 1.5"),
        ("scale = true\n", "optimizers.mine.scale must be a number (its default is 0.5), got True"),
        ("bounds = [1]\n", "optimizers.mine.bounds must be 2 values like its default [0.0, 1.0], got [1]"),
        ("flavour = 3\n", "optimizers.mine.flavour must be text (its default is 'plain'), got 3"),
    ],
)
def test_a_plugins_hyperparameters_are_checked_against_its_signature(plugin_path, extra, message):
    assert error_of(GRID + extra) == message


@pytest.mark.parametrize(
    "kind, message",
    [
        ("notorch:Plain", "is not a torch.optim.Optimizer subclass: name a class derived from torch.optim.Optimizer"),
        ("myoptim:a_function", "optimizer 'myoptim:a_function' is a function, not a class: name the class itself"),
        ("myoptim:HalfStp", "optimizer 'myoptim:HalfStp': module myoptim has no 'HalfStp' (did you mean 'HalfStep'?)"),
        ("nosuch.module:Thing", "optimizer 'nosuch.module:Thing': no module named 'nosuch' here: install the package"),
        ("broken:Anything", "optimizer 'broken:Anything': importing broken raised ZeroDivisionError: division by zero"),
        ("myoptim:NeedsBeta", "optimizers.mine (type myoptim:NeedsBeta) has no default for beta: set it in a variant"),
        ("halfstp", "optimizers.mine has type 'halfstp' (did you mean 'halfstep'?): use one of"),
    ],
)
def test_an_optimizer_that_cannot_be_used_is_one_line_naming_it(plugin_path, kind, message):
    assert message in error_of(GRID.replace("myoptim:HalfStep", kind))


def test_an_entry_point_name_is_used_like_a_built_in(plugin_path):
    specs = experiment("steps = 2\n[grid]\noptimizer = ['halfstep', 'adam']\nlr = [0.01]\n").specs()
    assert [spec.kind for spec in specs] == ["halfstep", "adam"]
    assert "(did you mean 'halfstep'?)" in error_of("[grid]\noptimizer = ['halfstp']\n")
    assert "halfstep" in error_of("[grid]\noptimizer = ['nothing-like-it']\n")  # listed among the choices


def test_an_optimizer_without_a_default_lr_needs_the_grid_to_give_one(plugin_path, tmp_path):
    (tmp_path / "site" / "nolr.py").write_text(
        "import torch\nclass NoLr(torch.optim.Optimizer):\n    def __init__(self, params, lr):\n"
        "        super().__init__(params, {'lr': lr})\n"
    )
    assert error_of("[grid]\noptimizer = ['nolr:NoLr']\n") == (
        "optimizer nolr:NoLr has no default lr (its constructor sets none): give [grid] lr"
    )
    sys.modules.pop("nolr", None)


PROBLEM = """
steps = 3
problem = "stripes"
loss = "cross_entropy"
batch_size = 8
[problem_settings]
noise = 0.2
[grid]
optimizer = ["halfstep"]
lr = [0.01]
"""


def test_a_problems_own_settings_are_checked_recorded_and_in_the_key_only_when_present(plugin_path):
    (spec,) = experiment(PROBLEM).specs()
    assert spec.problem == "stripes"
    assert dict(spec.problem_settings) == {"noise": 0.2, "width": 4, "own_net": False}
    params = spec.params()
    assert (params["problem.noise"], params["problem.width"], params["problem.own_net"]) == ("0.2", "4", "False")
    assert RunSpec.from_params(params) == spec
    (other,) = experiment(PROBLEM.replace("noise = 0.2", "noise = 0.3")).specs()
    assert other.key != spec.key
    (builtin,) = experiment("steps = 3\n[grid]\noptimizer = ['adam']\nlr = [0.01]\n").specs()
    assert builtin.problem_settings == () and "problem_settings" not in builtin.params()


@pytest.mark.parametrize(
    "change, message",
    [
        (
            ("noise = 0.2", "nois = 0.2"),
            "unknown setting 'nois' in problem_settings (did you mean 'noise'?): its constructor takes noise, own_net,"
            " width",
        ),
        (
            ("noise = 0.2", "batch_size = 3"),
            "unknown setting 'batch_size' in problem_settings (set by tinytrain): its constructor takes noise, "
            "own_net, width",
        ),
        (("noise = 0.2", "width = 'wide'"), "problem_settings.width must be an integer (its default is 4), got 'wide'"),
        (
            ('problem = "stripes"', 'problem = "stripe"'),
            "unknown problem 'stripe' (did you mean 'stripes'?): use one of one-sample, digits, stripes, or a plugin",
        ),
    ],
)
def test_a_bad_problem_or_setting_is_one_line(plugin_path, change, message):
    assert error_of(PROBLEM.replace(*change)).startswith(message)


def test_problem_settings_apply_to_plugin_problems_only():
    assert error_of("[problem_settings]\nnoise = 1.0\n") == (
        "problem_settings apply to a plugin problem; one-sample has none: drop [problem_settings]"
    )


def test_a_user_file_cannot_claim_a_plugins_signature():
    assert "(tinytrain writes it into a sweep's record" in error_of("[plugins.optimizers.x]\nclass = 'a:B'\n")


def test_a_sweeps_record_reads_back_to_the_same_keys_without_importing_its_plugins(plugin_path, monkeypatch):
    text = PROBLEM.replace('["halfstep"]', '["halfstep", "mine"]') + '[optimizers.mine]\ntype = "myoptim:HalfStep"\n'
    original = experiment(text)
    record = original.to_toml()
    assert '[plugins.optimizers."halfstep"]' in record and '[plugins.problems."stripes"]' in record
    # The plugins are gone: not importable, no entry points, not imported
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry != str(plugin_path)])
    plugins.entry_points.cache_clear()
    for name in ("myoptim", "myproblem"):
        sys.modules.pop(name, None)
    with pytest.raises(ConfigError, match="unknown problem 'stripes'"):
        experiment(text)  # a new experiment needs them
    again = load_experiment("run x", text=record, recorded=True)
    assert [spec.key for spec in again.specs()] == [spec.key for spec in original.specs()]
    assert again.specs() == original.specs()
    assert "myoptim" not in sys.modules and "myproblem" not in sys.modules
    assert again.to_toml().splitlines()[1:] == record.splitlines()[1:]  # but the "resolved from" line


def test_a_plugin_run_trains_reproducibly_and_records_where_its_classes_came_from(plugin_path):
    from tinytrain.engines.sequential import train

    (spec,) = experiment(PROBLEM).specs()
    first, second = train(spec), train(spec)
    assert first.outcome == "finished" and first.losses == second.losses and len(first.losses) == 4
    assert first.losses[-1] != first.losses[0]
    assert set(first.metrics) == {"test_loss"}
    runtime = first.runtime
    # halfstep comes from the dist-info's entry point, on a module folder outside any distribution's files
    assert runtime["plugin.optimizer.class"] == "myoptim:HalfStep"
    assert runtime["plugin.problem.class"] == "myproblem:Stripes"
    import hashlib

    assert (
        runtime["plugin.optimizer.source_sha256"]
        == hashlib.sha256((plugin_path / "myoptim.py").read_bytes()).hexdigest()
    )


def test_a_problem_brings_its_own_net(plugin_path):
    from tinytrain.engines.sequential import train

    (spec,) = experiment(PROBLEM.replace("noise = 0.2", "own_net = true")).specs()
    result = train(spec)
    assert result.outcome == "finished"
    assert sorted(result.final_weights) == ["1.bias", "1.weight"]


def test_a_plugin_that_raises_while_constructing_is_a_failed_run_in_one_line(plugin_path):
    from tinytrain.engines.sequential import train_safely

    (spec,) = experiment(GRID.replace("HalfStep", "Explodes")).specs()
    result = train_safely(spec)
    assert result.outcome == "failed"
    assert result.error == "RuntimeError: this optimizer cannot be built"


def test_a_worker_without_the_plugin_fails_the_run_in_one_line(plugin_path, monkeypatch):
    from tinytrain.engines.sequential import train_safely

    (spec,) = experiment(GRID).specs()
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry != str(plugin_path)])
    sys.modules.pop("myoptim", None)
    result = train_safely(spec)
    assert result.outcome == "failed"
    assert result.error.startswith("PluginError: optimizer 'myoptim:HalfStep': no module named 'myoptim' here")
    assert "\n" not in result.error


def test_a_hyperparameter_named_like_a_setting_is_logged_apart_and_read_back(plugin_path):
    (spec,) = experiment(GRID.replace("HalfStep", "Counts") + "steps = 5\n").specs()
    params = spec.params()
    assert (params["steps"], params["optimizer.steps"]) == ("3", "5")  # the run's steps, the optimizer's
    assert RunSpec.from_params(params) == spec
