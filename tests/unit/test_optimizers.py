"""The optimizer catalogue: every optimizer trains a few steps, reproduces bit for bit and records every
hyperparameter it used; `tinytrain optimizers` lists them without importing torch."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from tests.conftest import invoke
from tinytrain.engines.sequential import train
from tinytrain.optimizers import ADAMW_WITH_MUON, MUON_PARAMETERS, OPTIMIZERS
from tinytrain.spec import ConfigError, validate


def spec_of(kind: str, problem: str = "digits", **hyperparameters):
    # diverge_above off: at its default lr on 8-image batches rmsprop's third loss is past 1e3 x its first,
    # and these tests are about every optimizer training and reproducing, not about when a run diverges
    raw = {
        "steps": 3,
        "diverge_above": math.inf,
        "grid": {"optimizer": ["v"], "seed": [1]},
        "optimizers": {"v": {"type": kind, **hyperparameters}},
    }
    if problem == "digits":
        raw.update(problem="digits", batch_size=8, eval_every=2)
    return validate(raw).specs()[0]


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_each_optimizer_trains_and_reproduces_bit_for_bit(kind):
    spec = spec_of(kind)
    first, second = train(spec), train(spec)
    assert first.outcome == "finished", first.error
    assert len(first.losses) == 4 and first.losses == second.losses and first.metrics == second.metrics
    assert all(torch.equal(first.final_weights[name], second.final_weights[name]) for name in first.final_weights)
    assert first.losses != train(spec_of(kind, problem="one-sample")).losses[:4]


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_each_optimizer_records_every_hyperparameter_it_used(kind):
    spec = spec_of(kind)
    params = spec.params()
    for name, default in OPTIMIZERS[kind][2].items():
        assert name in params, name
        assert params[name] == (repr(default) if isinstance(default, float) else str(default))
    assert params["optimizer_type"] == kind and float(params["lr"]) == OPTIMIZERS[kind][1]
    from tinytrain.spec import RunSpec

    assert RunSpec.from_params(params) == spec and RunSpec.from_params(params).key == spec.key  # what reproduce reads


def test_a_set_hyperparameter_changes_the_run_and_comes_back_from_its_params():
    from tinytrain.spec import RunSpec

    spec = spec_of("ademamix", alpha=2.0, betas=[0.9, 0.99, 0.999], t_alpha_beta3=10.0)
    assert dict(spec.hyperparameters)["betas"] == (0.9, 0.99, 0.999)
    assert RunSpec.from_params(spec.params()) == spec
    assert train(spec).losses != train(spec_of("ademamix")).losses
    rprop = spec_of("rprop", step_sizes=[1e-5, 10])
    assert RunSpec.from_params(rprop.params()).key == rprop.key


def test_muon_trains_the_hidden_matrices_and_adamw_the_rest():
    from tinytrain.model import LeNet
    from tinytrain.optimizers import build_optimizer

    net = LeNet()
    names = {id(parameter): name for name, parameter in net.named_parameters()}
    together = build_optimizer("muon", list(net.named_parameters()), 0.02, dict(OPTIMIZERS["muon"][2]))
    muon, adamw = together.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert [names[id(p)] for p in muon.param_groups[0]["params"]] == list(MUON_PARAMETERS)
    assert [names[id(p)] for p in adamw.param_groups[0]["params"]] == list(ADAMW_WITH_MUON)
    assert all(p.ndim == 2 for p in muon.param_groups[0]["params"])
    assert adamw.param_groups[0]["lr"] == OPTIMIZERS["muon"][2]["adamw_lr"]
    params = spec_of("muon").params()
    assert params["muon_parameters"] == "fc1.weight,fc2.weight"
    assert params["adamw_parameters"].split(",") == list(ADAMW_WITH_MUON)
    assert sorted(MUON_PARAMETERS + ADAMW_WITH_MUON) == sorted(names.values())


@pytest.mark.parametrize(
    "kind, key, hint",
    [("lion", "momentum", ""), ("muon", "betas", " (did you mean 'adamw_betas'?)"), ("soap", "clip_lambda", "")],
)
def test_unknown_hyperparameters_get_one_line_with_a_did_you_mean(kind, key, hint):
    with pytest.raises(ConfigError) as error:
        spec_of(kind, **{key: 0.5})
    known = ", ".join(sorted(OPTIMIZERS[kind][2]))
    assert (
        str(error.value)
        == f"unknown hyperparameter '{key}' for optimizer 'v' (type {kind}){hint}: known ones are {known}"
    )


def test_the_catalogue_command_lists_every_optimizer_with_its_defaults():
    result = invoke(["optimizers"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for kind, (_class, lr, defaults) in OPTIMIZERS.items():
        (line,) = [index for index, text in enumerate(lines) if text.split()[0] == kind and " lr=" in text]
        assert lines[line].endswith(f"lr={lr:g}")
        assert all(f"{name}={value}" in lines[line + 1] for name, value in defaults.items())
    assert "torch.optim.Muon" in result.output and "pytorch-optimizer Lion" in result.output


def test_the_catalogue_needs_neither_torch_nor_mlflow():
    code = (
        "import sys; from tinytrain.cli import cli; from click.testing import CliRunner; "
        "out = CliRunner().invoke(cli, ['optimizers']); "
        "print(out.exit_code, 'torch' in sys.modules, 'mlflow' in sys.modules, 'pytorch_optimizer' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0 False False False"
