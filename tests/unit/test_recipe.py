"""The training recipe: schedules on torch.optim.lr_scheduler, weight decay, gradient clipping; the same bits on
both engines; a run stopped at step k and continued from its optimizer's and scheduler's state equals one run."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tinytrain.engines.batched import train_batch
from tinytrain.engines.recipe import Schedules, make_scheduler
from tinytrain.engines.sequential import initial_net, train
from tinytrain.model import LeNet
from tinytrain.optimizers import build_optimizer
from tinytrain.problems import loss_function, make_problem
from tinytrain.spec import RunSpec, validate
from tinytrain.spec.settings import SCHEDULES

STEPS = 12


def spec_of(**settings) -> RunSpec:
    grid = settings.pop("grid", {"optimizer": ["adam"], "lr": [0.01]})
    return validate({"steps": STEPS, **settings, "grid": grid}).specs()[0]


RECIPES = {
    "constant": {},
    "warmup": {"warmup": 3},
    "cosine": {},
    "warmup-cosine": {"warmup": 0.25},
    "wsd": {"warmup": 2, "decay": 0.5},
    "linear": {},
    "step": {"step_size": 4, "gamma": 0.5},
}


def test_every_schedule_has_a_recipe_here():
    assert set(RECIPES) == set(SCHEDULES)


def test_cosine_without_warmup_logs_the_lr_of_cosine_annealing_before_each_step():
    spec = spec_of(schedule="cosine")
    result = train(spec)
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=spec.lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=STEPS)
    expected = []
    for _ in range(STEPS):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        cosine.step()
    assert [result.metrics["lr"][step] for step in range(STEPS)] == expected
    assert expected[0] == 0.01 and expected[-1] < 0.001  # it does decay
    assert [value for _step, value in result.logged_metrics()["lr"]] == expected
    assert "final_lr" not in result.logged_metrics()


def test_warmup_then_cosine_is_sequential_lr_of_linear_warmup_and_cosine():
    spec = spec_of(schedule="warmup-cosine", warmup=0.25)  # 3 steps of 12
    lrs = [train(spec).metrics["lr"][step] for step in range(STEPS)]
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    warmup = torch.optim.lr_scheduler.LinearLR(reference, start_factor=1 / 4, end_factor=1.0, total_iters=3)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=9)
    sequential = torch.optim.lr_scheduler.SequentialLR(reference, [warmup, cosine], milestones=[3])
    expected = []
    for _ in range(STEPS):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        sequential.step()
    assert lrs == expected
    assert lrs[0] == pytest.approx(0.0025) and lrs[3] == pytest.approx(0.01) and lrs[-1] < lrs[4]


def test_a_constant_schedule_logs_no_lr_and_no_clipping_logs_no_norm():
    result = train(spec_of())
    assert "lr" not in result.metrics and "grad_norm" not in result.metrics


def test_the_logged_grad_norm_is_what_clip_grad_norm_returns_and_the_gradients_are_clipped():
    """The run replayed by hand with clip_grad_norm_ gives the same norms and the same losses; clipping changes
    the run (the norms here are above the bound)."""
    spec = spec_of(clip_grad_norm=0.05, grid={"optimizer": ["sgd"], "lr": [0.5]})
    result = train(spec)
    torch.manual_seed(spec.seed)
    net = LeNet()
    optimizer = build_optimizer("sgd", list(net.named_parameters()), spec.lr, spec.optimizer_kwargs)
    loss_of = loss_function(spec.loss)
    x, labels = next(make_problem(spec).batches(spec.seed))
    norms, losses = [], []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = loss_of(net(x), labels)
        losses.append(loss.item())
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(net.parameters(), 0.05).item())
        optimizer.step()
    assert [result.metrics["grad_norm"][step] for step in range(STEPS)] == norms
    assert result.losses[:STEPS] == losses
    assert max(norms) > 0.05 and train(replace(spec, clip_grad_norm=0.0)).losses != result.losses


def test_weight_decay_is_one_setting_for_every_optimizer_that_takes_it():
    experiment = validate({"weight_decay": 0.02, "grid": {"optimizer": ["adam", "adamw", "sgd", "muon"]}})
    assert [spec.optimizer_kwargs["weight_decay"] for spec in experiment.specs()] == [0.02] * 4
    plain = validate({"grid": {"optimizer": ["adam"]}}).specs()[0]
    decayed = validate({"weight_decay": 0.0, "grid": {"optimizer": ["adam"]}}).specs()[0]
    assert decayed.key == plain.key  # adam's own default: the same cell


def wrong(raw: dict) -> str:
    from tinytrain.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        validate(raw)
    return str(error.value)


def test_recipe_mistakes_are_one_line_each():
    assert wrong({"schedule": "cosin"}) == (
        "schedule must be one of constant, warmup, cosine, warmup-cosine, wsd, linear, step, got 'cosin' "
        "(did you mean 'cosine'?)"
    )
    assert wrong({"schedule": "warmup-cosine"}).startswith("schedule 'warmup-cosine' needs a warmup: ")
    assert wrong({"schedule": "warmup", "warmup": 100}) == (
        "warmup 100 (100 steps) is not shorter than the run's 100 steps: give fewer steps or a fraction "
        "below 1, e.g. warmup = 0.05"
    )
    assert wrong({"warmup": 1.5}).startswith("warmup must be steps (an integer >= 0) or a fraction of steps in (0, 1)")
    assert wrong({"clip_grad_norm": -1}).startswith("clip_grad_norm must be a finite number >= 0")
    assert wrong({"schedule": "wsd", "warmup": 60, "decay": 50}).startswith("wsd's decay 50 (50 steps) must be")
    assert wrong({"weight_decay": 0.1, "grid": {"optimizer": ["rprop"]}}) == (
        "weight_decay 0.1 applies to every optimizer, but 'rprop' (type rprop) takes none: drop weight_decay "
        "or that optimizer"
    )
    assert (
        wrong(
            {
                "weight_decay": 0.1,
                "optimizers": {"a": {"type": "adam", "weight_decay": 0.3}},
                "grid": {"optimizer": ["a"]},
            }
        )
        == "optimizers.a fixes weight_decay and so does the setting weight_decay: drop one of the two"
    )
    assert wrong({"gamma": 0}).startswith("gamma must be a number in (0, 1]")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_each_schedule_gives_the_same_bits_on_both_engines(schedule):
    """Each schedule, with clipping and decoupled and coupled weight decay, over four optimizers in one batch:
    every loss, lr, norm and the final weights equal the sequential engine's."""
    raw = {
        "steps": STEPS,
        "engine": "vmap",
        "schedule": schedule,
        "clip_grad_norm": 0.5,
        "weight_decay": 0.01,
        **RECIPES[schedule],
        "grid": {"optimizer": ["adam", "adamw", "sgd", "rmsprop", "adagrad"], "lr": [0.003, 0.03], "seed": [0]},
    }
    specs = validate(raw).specs()
    results = {result.spec: result for result in train_batch(specs)}
    for spec in specs:
        got, expected = results[spec], train(replace(spec, engine="sequential"))
        assert got.runtime["engine"] == "vmap"
        assert got.losses == expected.losses or all(
            a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(got.losses, expected.losses, strict=True)
        ), spec.run_name
        assert got.metrics == expected.metrics, spec.run_name
        assert got.outcome == expected.outcome
        if expected.final_weights is not None:
            assert all(torch.equal(got.final_weights[k], v) for k, v in expected.final_weights.items()), spec.run_name


def test_cells_with_and_without_a_recipe_share_a_batch_bit_for_bit():
    plain = validate({"steps": STEPS, "engine": "vmap", "grid": {"optimizer": ["adam", "sgd"], "lr": [0.01]}})
    recipe = validate(
        {
            "steps": STEPS,
            "engine": "vmap",
            "schedule": "cosine",
            "clip_grad_norm": 0.1,
            "grid": {"optimizer": ["adam", "sgd"], "lr": [0.01]},
        }
    )
    specs = [*plain.specs(), *recipe.specs()]
    for result in train_batch(specs):
        expected = train(replace(result.spec, engine="sequential"))
        assert result.losses == expected.losses and result.metrics == expected.metrics


@pytest.mark.parametrize("schedule", ["warmup-cosine", "wsd", "step"])
def test_a_run_stopped_at_step_k_continues_bit_for_bit_from_its_states(schedule):
    """The scheduler's state_dict (with the optimizer's) is all that decides the lr: a fresh net, optimizer and
    scheduler loaded from the states after k steps continue exactly as the run that never stopped."""
    spec = spec_of(schedule=schedule, **RECIPES[schedule])
    loss_of = loss_function(spec.loss)
    x, labels = next(make_problem(spec).batches(spec.seed))

    def start(net):
        optimizer = build_optimizer(spec.kind, list(net.named_parameters()), spec.lr, spec.optimizer_kwargs)
        return optimizer, Schedules(optimizer, spec)

    def steps(net, optimizer, schedules, count):
        losses = []
        for _ in range(count):
            optimizer.zero_grad()
            loss = loss_of(net(x), labels)
            losses.append((loss.item(), schedules.lr))
            loss.backward()
            optimizer.step()
            schedules.step()
        return losses

    net = initial_net(spec)
    optimizer, schedules = start(net)
    whole = steps(net, optimizer, schedules, STEPS)
    first = initial_net(spec)
    optimizer, schedules = start(first)
    head = steps(first, optimizer, schedules, 5)
    saved = (
        {k: v.clone() for k, v in first.state_dict().items()},
        optimizer.state_dict(),
        schedules.state_dict(),
    )
    again = LeNet()
    again.load_state_dict(saved[0])
    optimizer, schedules = start(again)
    optimizer.load_state_dict(saved[1])
    schedules.load_state_dict(saved[2])
    assert head + steps(again, optimizer, schedules, STEPS - 5) == whole


def test_make_scheduler_is_none_for_a_constant_lr():
    spec = spec_of()
    assert make_scheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), spec) is None
