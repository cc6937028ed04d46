"""The experiment itself: the tutorial LeNet, the fixed problem and the loss-recording contract."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import torch

from tinytrain.engines.sequential import evaluate, train, train_safely
from tinytrain.model import PARAMETER_COUNT, LeNet
from tinytrain.problems.one_sample import loss_fn, make_input, make_target
from tinytrain.results import DIVERGED, FAILED, FINISHED
from tinytrain.spec import validate


def one_spec(**settings):
    grid = {
        "optimizer": [settings.pop("optimizer", "adam")],
        "lr": [settings.pop("lr", 1e-3)],
        "seed": [settings.pop("seed", 0)],
    }
    return validate({**settings, "grid": grid}).specs()[0]


def test_lenet_has_the_tutorials_61706_parameters_and_shapes():
    net = LeNet()
    assert sum(p.numel() for p in net.parameters()) == PARAMETER_COUNT == 61_706
    assert [tuple(p.shape) for p in net.parameters()] == [
        (6, 1, 5, 5),
        (6,),
        (16, 6, 5, 5),
        (16,),
        (120, 400),
        (120,),
        (84, 120),
        (84,),
        (10, 84),
        (10,),
    ]
    assert net(make_input(0)).shape == (1, 10)


def test_input_and_target_are_the_documented_ones():
    assert torch.equal(make_input(0), torch.randn((1, 1, 32, 32), generator=torch.Generator().manual_seed(0)))
    torch.manual_seed(123)  # the run's seed must not change the input
    assert torch.equal(make_input(0), make_input(0))
    assert not torch.equal(make_input(0), make_input(1))
    assert make_target(3).tolist() == [[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]]


def test_losses_follow_the_recording_contract():
    """loss[i] before step i's update; loss[steps] after the last; replayed by hand with torch.optim."""
    spec = one_spec(optimizer="sgd", lr=0.05, seed=4, steps=5)
    result = train(spec)
    assert result.outcome == FINISHED and len(result.losses) == spec.steps + 1
    torch.manual_seed(4)
    net = LeNet()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    x, target = make_input(0), make_target(3)
    expected = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = loss_fn(net(x), target)
        expected.append(loss.item())
        loss.backward()
        optimizer.step()
    expected.append(loss_fn(net(x), target).item())
    assert result.losses == expected
    assert result.initial_loss == expected[0] and result.final_loss == expected[-1]
    assert evaluate(result.final_weights, 0, 3) == result.final_loss


def test_one_adam_step_lowers_the_loss_like_the_blog():
    result = train(one_spec(steps=1))
    before, after = result.losses
    assert 0.05 < before < 0.15 and after < before  # the blog: 0.098 -> 0.069


def test_the_same_run_twice_is_bit_identical_also_in_another_process():
    spec = one_spec(optimizer="adam", lr=1e-2, seed=1, steps=20)
    first, second = train(spec).losses, train(spec).losses
    assert first == second
    code = (
        "import json; from tinytrain.spec import validate; from tinytrain.engines.sequential import train; "
        "s = validate({'steps': 20, 'grid': {'optimizer': ['adam'], 'lr': [1e-2], 'seed': [1]}}).specs()[0]; "
        "print(json.dumps(train(s).losses))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(other.stdout) == first


def test_seeds_differ():
    assert train(one_spec(seed=0, steps=1)).losses != train(one_spec(seed=1, steps=1)).losses


def test_a_non_finite_loss_ends_the_run_as_diverged_without_weights():
    result = train(one_spec(optimizer="sgd", lr=1e3, steps=20, diverge_above=math.inf))  # the bound off
    assert result.outcome == DIVERGED and result.final_weights is None
    assert not math.isfinite(result.losses[-1]) and all(math.isfinite(v) for v in result.losses[:-1])
    assert len(result.losses) < 21


def test_checkpoints_every_n_steps():
    result = train(one_spec(steps=7, checkpoint_every=3))
    assert sorted(result.checkpoints) == [3, 6]
    assert evaluate(result.checkpoints[3], 0, 3) == result.losses[3]


def test_a_run_that_raises_becomes_a_failed_result():
    spec = one_spec(steps=2)
    broken = replace(spec, kind="no-such-optimizer")
    result = train_safely(broken)
    assert result.outcome == FAILED and result.losses == []
    assert result.error.startswith("PluginError: optimizer 'no-such-optimizer' is no entry point")  # a plugin's name


def test_runtime_settings_are_applied_and_recorded():
    result = train(one_spec(steps=1))
    assert result.runtime == {
        "engine": "sequential",
        "torch_threads": "1",
        "mkldnn_enabled": "False",
        "deterministic_algorithms": "True",
    }


def test_a_loss_past_diverge_above_times_the_initial_ends_the_run_as_diverged():
    """rmsprop at lr 0.1 (seed 0) grows past 1e3 x its initial loss and stays finite: diverged at that step.
    With the bound off (inf, or None for a run recorded before it existed) it runs its 100 steps."""
    raw = {"steps": 100, "grid": {"optimizer": ["rmsprop"], "lr": [0.1], "seed": [0]}}
    bounded = train(validate(raw).specs()[0])
    unbounded = train(validate({**raw, "diverge_above": math.inf}).specs()[0])
    assert unbounded.outcome == FINISHED and len(unbounded.losses) == 101
    assert max(unbounded.losses) > 1e3 * unbounded.losses[0] and all(map(math.isfinite, unbounded.losses))
    first = next(step for step, loss in enumerate(unbounded.losses) if loss > 1e3 * unbounded.losses[0])
    assert bounded.outcome == DIVERGED and bounded.final_weights is None
    assert bounded.losses == unbounded.losses[: first + 1]
    legacy = replace(validate(raw).specs()[0], diverge_above=None)
    assert train(legacy).losses == unbounded.losses


def test_the_warm_up_before_a_sweep_trains_changes_nothing_a_result_depends_on():
    """engines.sequential.warm_up runs while the writer starts: no random number, no runtime setting."""
    from tinytrain.engines.sequential import warm_up

    state, threads, mkldnn = torch.get_rng_state(), torch.get_num_threads(), torch.backends.mkldnn.enabled
    warm_up()
    assert torch.equal(torch.get_rng_state(), state)
    assert (torch.get_num_threads(), torch.backends.mkldnn.enabled) == (threads, mkldnn)
    assert "torch._dynamo" in sys.modules  # what it is for: the first optimizer's import is done


def test_checkpoints_of_a_schedule_free_run_change_none_of_its_numbers():
    """Its checkpoints are of the averaged weights (optimizer.eval()); the training weights come back bit for
    bit, so a run checkpointed every 5 steps computes what a run checkpointed only at its end does."""
    from tinytrain.spec import load_experiment

    text = 'name = "sf"\nsteps = 20\n[grid]\noptimizer = ["schedulefree-adamw"]\nlr = [0.01]\nseed = [0]\n'
    plain = train(load_experiment("sf", text=text).specs()[0])
    spec = load_experiment("sf", ["checkpoint_every=5"], text=text).specs()[0]
    checkpointed, round_trip = train(spec), train(replace(spec, round_trip_evaluation=True))
    assert checkpointed.losses == plain.losses and checkpointed.runtime["evaluation"] == "exact"
    assert all(torch.equal(checkpointed.final_weights[k], v) for k, v in plain.final_weights.items())
    assert round_trip.losses != plain.losses and round_trip.runtime["evaluation"] == "round-trip"  # as before


def test_a_result_goes_to_the_writer_with_its_weights_only_where_its_record_keeps_them():
    """The hand-over to the writer process: weights as their files' bytes (model, weights), none at all with
    record = none (the writer would throw them away); the rest of the result as trained."""
    import pickle

    from tinytrain.tracking.background import _for_the_writer
    from tinytrain.tracking.model_files import SavedWeights

    for record in ("model", "weights", "none"):
        result = train_safely(one_spec(steps=4, checkpoint_every=2, record=record))
        assert result.final_weights is not None and result.checkpoints
        sent = pickle.loads(pickle.dumps(_for_the_writer(result)))
        assert (sent.losses, sent.metrics, sent.outcome, sent.runtime) == (
            result.losses,
            result.metrics,
            result.outcome,
            result.runtime,
        )
        if record == "none":
            assert sent.final_weights is None and sent.checkpoints == {}
            assert len(pickle.dumps(sent)) < 20_000  # not the weights' size
        else:
            assert isinstance(sent.final_weights, SavedWeights) and set(sent.checkpoints) == set(result.checkpoints)
