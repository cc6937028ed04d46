"""Runs that stop and continue: a run stopped at step k and continued to n equals the run trained straight to n,
bit for bit (every loss, every held-out metric, the final weights), from weights-only state files."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from tinytrain.engines.planner import plan_batches
from tinytrain.engines.sequential import train
from tinytrain.engines.state import latest_state, saved_steps, state_path
from tinytrain.results import FINISHED, STOPPED
from tinytrain.spec import validate


def spec_of(**settings):
    grid = {"optimizer": [settings.pop("optimizer", "adam")], "seed": [3]}
    return validate({"steps": 24, **settings, "grid": grid}).specs()[0]


def same_run(one, other) -> bool:
    weights = one.final_weights.keys() == other.final_weights.keys() and all(
        torch.equal(one.final_weights[name], other.final_weights[name]) for name in one.final_weights
    )
    return one.losses == other.losses and one.metrics == other.metrics and weights and one.outcome == other.outcome


CASES = [
    {"optimizer": "adam"},
    {"optimizer": "sgd-momentum"},
    {"optimizer": "muon"},  # two optimizers stepped together: both states travel
    {"optimizer": "adam", "problem": "digits", "eval_every": 4, "batch_size": 16},
    {"optimizer": "sgd", "problem": "digits", "loss": "cross_entropy", "eval_every": 0, "batch_size": 200},
]


@pytest.mark.parametrize("settings", CASES, ids=lambda s: f"{s.get('problem', 'one-sample')}-{s['optimizer']}")
def test_a_run_stopped_at_a_random_step_and_continued_equals_the_straight_run(settings, tmp_path):
    if settings["optimizer"] == "sgd-momentum":
        settings = {**settings, "optimizers": {"sgd-momentum": {"type": "sgd", "momentum": 0.9}}}
    spec = spec_of(**settings)
    straight = train(spec)
    stop = random.Random(repr(settings)).randrange(1, spec.steps)
    stopped = train(dataclasses.replace(spec, state_folder=str(tmp_path), stop_at=stop))
    assert stopped.outcome == STOPPED and stopped.losses == straight.losses[: stop + 1]
    so_far = {name: {s: v for s, v in series.items() if s <= stop} for name, series in straight.metrics.items()}
    assert {name: series for name, series in so_far.items() if series} == stopped.metrics
    assert saved_steps(tmp_path, spec.lineage) == [stop]
    continued = train(dataclasses.replace(spec, state_folder=str(tmp_path)))
    assert continued.runtime["continued_from_step"] == str(stop)
    assert same_run(continued, straight)


def test_raising_steps_continues_from_where_the_shorter_run_ended(tmp_path):
    spec = spec_of(problem="digits", eval_every=5, batch_size=16)
    short = train(dataclasses.replace(spec, steps=15, state_folder=str(tmp_path)))
    assert short.outcome == FINISHED and saved_steps(tmp_path, spec.lineage) == [15]
    longer = dataclasses.replace(spec, steps=40)
    continued = train(dataclasses.replace(longer, state_folder=str(tmp_path)))
    assert continued.runtime["continued_from_step"] == "15"
    assert same_run(continued, train(longer))
    assert longer.key != spec.key and longer.lineage == spec.lineage  # steps is in the key, not in the lineage


def test_a_training_keeps_only_its_latest_state_and_the_one_it_continued_from(tmp_path):
    """Every checkpoint_every steps a state replaces the previous one (a killed process leaves its last);
    the state a training continued from stays, as a rung's state is another run's start."""
    spec = dataclasses.replace(spec_of(), checkpoint_every=5, state_folder=str(tmp_path))
    train(dataclasses.replace(spec, stop_at=12))
    assert saved_steps(tmp_path, spec.lineage) == [12]
    continued = train(spec)
    assert continued.runtime["continued_from_step"] == "12"
    assert same_run(continued, train(spec_of()))
    assert saved_steps(tmp_path, spec.lineage) == [12, 24]


def test_the_state_is_a_weights_only_file_of_tensors_and_plain_containers(tmp_path):
    spec = spec_of(problem="digits", eval_every=4, batch_size=16)
    train(dataclasses.replace(spec, state_folder=str(tmp_path), stop_at=9))
    state = torch.load(state_path(tmp_path, spec.lineage, 9), weights_only=True)
    assert state["step"] == 9 and len(state["losses"]) == 9 and set(state["metrics"]) == {"test_loss", "test_accuracy"}
    assert {"weights", "optimizer", "rng", "data"} <= set(state)
    assert latest_state(tmp_path, spec.lineage, 8) is None  # nothing at or before step 8
    (tmp_path / spec.lineage / "step-00000012.pt").write_bytes(b"not a state")
    assert latest_state(tmp_path, spec.lineage, 20)["step"] == 9  # a damaged file is passed over


def test_a_diverged_run_leaves_no_state_to_continue_from(tmp_path):
    spec = dataclasses.replace(spec_of(optimizer="sgd"), lr=1e6, state_folder=str(tmp_path), checkpoint_every=1)
    assert train(spec).outcome == "diverged"
    assert saved_steps(tmp_path, spec.lineage) == []


def test_the_vmap_engine_leaves_cells_with_a_state_folder_to_the_sequential_engine():
    spec = spec_of(engine="vmap")
    plan = plan_batches([spec, dataclasses.replace(spec, seed=9, state_folder="states")])
    assert [len(batch) for batch in plan.batches] == [1] and len(plan.sequential) == 1
    assert plan.fallback_reason[plan.sequential[0]] == "it saves or continues from a training state"


SCHEDULED = [
    {"optimizer": "adam", "schedule": "warmup-cosine", "warmup": 6},
    {"optimizer": "muon", "schedule": "warmup-cosine", "warmup": 0.25},  # two schedulers, one per inner optimizer
    {"optimizer": "sgd", "schedule": "step", "step_size": 5, "gamma": 0.5, "clip_grad_norm": 0.5},
    {"optimizer": "adam", "problem": "digits", "schedule": "wsd", "warmup": 4, "eval_every": 4, "batch_size": 16},
]


@pytest.mark.parametrize("settings", SCHEDULED, ids=lambda s: f"{s['optimizer']}-{s['schedule']}")
def test_a_scheduled_run_stopped_and_continued_equals_the_straight_run(settings, tmp_path):
    """The schedulers' state travels with the training state: continued, the lr of every step (logged as `lr`)
    and so every loss and weight are the straight run's. Without it the schedule would start over."""
    spec = spec_of(**settings)
    straight = train(spec)
    assert len(set(straight.metrics["lr"].values())) > 2  # the schedule does change the lr over the run
    for stop in (3, 13):  # in the warmup and after it
        folder = tmp_path / str(stop)
        stopped = train(dataclasses.replace(spec, state_folder=str(folder), stop_at=stop))
        assert stopped.outcome == STOPPED and stopped.losses == straight.losses[: stop + 1]
        assert "scheduler" in torch.load(state_path(folder, spec.lineage, stop), weights_only=True)
        continued = train(dataclasses.replace(spec, state_folder=str(folder)))
        assert continued.runtime["continued_from_step"] == str(stop)
        assert continued.metrics["lr"] == straight.metrics["lr"]
        assert same_run(continued, straight)


def test_a_scheduled_run_does_not_continue_from_a_run_of_other_steps(tmp_path):
    """A schedule is shaped by `steps` (a cosine's length, a fraction's warmup): a longer run starts afresh."""
    spec = spec_of(schedule="warmup-cosine", warmup=0.25)
    train(dataclasses.replace(spec, steps=12, state_folder=str(tmp_path)))
    longer = train(dataclasses.replace(spec, state_folder=str(tmp_path)))
    assert "continued_from_step" not in longer.runtime
    assert same_run(longer, train(spec))
    assert dataclasses.replace(spec, steps=12).lineage != spec.lineage
    constant = spec_of()
    assert dataclasses.replace(constant, steps=12).lineage == constant.lineage
