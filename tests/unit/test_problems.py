"""The problems: the digits data and its split, the batches of a run, the losses, the test metrics, and the
run keys of one-sample runs that the new settings must leave as they were."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from tinytrain.engines.sequential import evaluation_mode, train
from tinytrain.model import LeNet
from tinytrain.problems import digits, loss_function, make_problem
from tinytrain.problems.one_sample import loss_fn, make_input, make_target
from tinytrain.spec import load_experiment, validate
from tinytrain.spec.catalogue import DIGITS_TRAINING_IMAGES, TEST_METRICS
from tinytrain.spec.settings import digits_training_images


def digits_spec(**settings):
    grid = {
        "optimizer": [settings.pop("optimizer", "adam")],
        "lr": [settings.pop("lr", 1e-3)],
        "seed": [settings.pop("seed", 0)],
    }
    raw = {"problem": "digits", "steps": 4, "batch_size": 8, "eval_every": 2, **settings, "grid": grid}
    return validate(raw).specs()[0]


def test_digits_are_scaled_upsampled_and_split_80_20_stratified():
    from sklearn.datasets import load_digits

    (train_x, train_y), _no_validation, (test_x, test_y) = digits.load(0)
    assert train_x.shape == (DIGITS_TRAINING_IMAGES, 1, 32, 32) and test_x.shape == (360, 1, 32, 32)
    assert train_x.dtype == torch.float32 and train_x.min() >= 0 and train_x.max() <= 1
    everything = Counter(load_digits().target.tolist())
    for label, count in Counter(test_y.tolist()).items():  # stratified: each class about 20 % held out
        assert abs(count - 0.2 * everything[label]) <= 1
    # the documented resize, recomputed: the first training image is some image of load_digits, upsampled
    images = torch.tensor(load_digits().images / 16.0, dtype=torch.float32).unsqueeze(1)
    upsampled = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    assert any(torch.equal(train_x[0], image) for image in upsampled)


def test_the_split_is_decided_by_data_seed_alone():
    torch.manual_seed(5)
    first = digits.load.__wrapped__(0)
    torch.manual_seed(6)
    again = digits.load.__wrapped__(0)
    other = digits.load.__wrapped__(1)
    assert torch.equal(first[2][1], again[2][1]) and torch.equal(first[0][0], again[0][0])
    assert not torch.equal(first[2][1], other[2][1])


def test_a_runs_batches_depend_on_its_seed_only():
    problem = make_problem(digits_spec())
    torch.manual_seed(123)  # the global RNG (the net's initialisation) plays no part
    first = [labels for _x, labels in (next(b) for b in [problem.batches(0)] * 30)]
    torch.manual_seed(456)
    again = [labels for _x, labels in (next(b) for b in [problem.batches(0)] * 30)]
    other = [labels for _x, labels in (next(b) for b in [problem.batches(1)] * 30)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert all(len(labels) == 8 for labels in first)


def test_an_epoch_is_a_permutation_of_the_training_images_cut_into_full_batches():
    batches = make_problem(digits_spec(batch_size=64)).batches(2)
    (train_x, _train_y), _, _ = digits.load(0)
    generator = torch.Generator().manual_seed(2 + digits.BATCH_SEED_OFFSET)
    order = torch.randperm(DIGITS_TRAINING_IMAGES, generator=generator)
    per_epoch = DIGITS_TRAINING_IMAGES // 64  # 22 batches; the last 29 images of the permutation are dropped
    for index in range(per_epoch):
        assert torch.equal(next(batches)[0], train_x[order[index * 64 : (index + 1) * 64]])
    next_epoch = torch.randperm(DIGITS_TRAINING_IMAGES, generator=generator)
    assert torch.equal(next(batches)[0], train_x[next_epoch[:64]])


def test_the_same_seed_trains_on_the_same_batches_whatever_the_optimizer():
    """Replayed by hand: adam's and sgd's runs of seed 3 see the batches problem.batches(3) draws."""
    for optimizer, lr in (("adam", 1e-3), ("sgd", 0.1)):
        spec = digits_spec(optimizer=optimizer, lr=lr, seed=3, steps=3)
        result = train(spec)
        torch.manual_seed(3)
        net = LeNet()
        step_of = getattr(torch.optim, {"adam": "Adam", "sgd": "SGD"}[optimizer])(net.parameters(), lr=lr)
        expected = []
        for x, labels in (next(b) for b in [make_problem(spec).batches(3)] * 3):
            step_of.zero_grad()
            loss = F.mse_loss(net(x), F.one_hot(labels, 10).float())
            expected.append(loss.item())
            loss.backward()
            step_of.step()
        with torch.no_grad():
            expected.append(F.mse_loss(net(x), F.one_hot(labels, 10).float()).item())
        assert result.losses == expected, optimizer


def test_test_metrics_every_eval_every_steps_and_at_the_end():
    result = train(digits_spec(steps=5, eval_every=2))
    assert set(result.metrics) == set(TEST_METRICS)
    assert sorted(result.metrics["test_accuracy"]) == [0, 2, 4, 5]
    _, _, (test_x, test_y) = digits.load(0)
    net = LeNet()
    net.load_state_dict(result.final_weights)
    with torch.no_grad():
        outputs = net(test_x)
    assert result.metrics["test_accuracy"][5] == (outputs.argmax(1) == test_y).double().mean().item()
    assert result.metrics["test_loss"][5] == F.mse_loss(outputs, F.one_hot(test_y, 10).float()).item()
    only_the_end = train(digits_spec(steps=3, eval_every=0))
    assert sorted(only_the_end.metrics["test_loss"]) == [3]


def test_cross_entropy_on_both_problems():
    outputs, labels = torch.randn(4, 10), torch.tensor([1, 0, 3, 9])
    assert loss_function("cross_entropy")(outputs, labels) == F.cross_entropy(outputs, labels)
    one_sample = validate({"loss": "cross_entropy", "steps": 2}).specs()[0]
    result = train(one_sample)
    torch.manual_seed(0)
    net = LeNet()
    assert result.losses[0] == F.cross_entropy(net(make_input(0)), torch.tensor([3])).item()
    assert train(digits_spec(loss="cross_entropy")).losses != train(digits_spec()).losses


def test_mse_on_the_one_hot_label_is_the_blogs_loss_bit_for_bit():
    outputs = LeNet()(make_input(0))
    assert loss_function("mse")(outputs, torch.tensor([3])).item() == loss_fn(outputs, make_target(3)).item()


def test_a_digits_run_is_bit_identical_twice_including_its_test_metrics():
    first, second = train(digits_spec(steps=6)), train(digits_spec(steps=6))
    assert first.losses == second.losses and first.metrics == second.metrics
    assert all(torch.equal(first.final_weights[k], second.final_weights[k]) for k in first.final_weights)


def test_one_sample_run_keys_are_those_written_before_problems_were_a_setting():
    """Computed with the code of main before this change: the stores written then stay resumable."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    # recorded=True: read as a sweep's recorded experiment file of then, which had no diverge_above (None)
    grid = load_experiment(root / "experiments/optimizer-grid.toml", recorded=True).specs()
    assert (grid[0].key, grid[-1].key, len(grid)) == ("21fdee43d7800e53", "79c5747f1d4959e7", 45)
    one_step = load_experiment(root / "experiments/one-step-adam.toml", recorded=True).specs()[0]
    assert one_step.key == "d9c9fe69e16bc99e"
    assert "problem" not in grid[0].params() or grid[0].params()["problem"] == "one-sample"
    digits_key = digits_spec().key
    assert digits_key != validate({"grid": {"optimizer": ["adam"], "lr": [1e-3]}}).specs()[0].key
    assert digits_spec(batch_size=16).key != digits_key and digits_spec(eval_every=3).key != digits_key
    assert digits_spec(loss="cross_entropy").key != digits_key


def test_new_settings_are_params_and_come_back_from_them():
    from tinytrain.spec import RunSpec

    spec = digits_spec(loss="cross_entropy", batch_size=16, eval_every=3)
    params = spec.params()
    assert {k: params[k] for k in ("problem", "loss", "batch_size", "eval_every")} == {
        "problem": "digits",
        "loss": "cross_entropy",
        "batch_size": "16",
        "eval_every": "3",
    }
    assert RunSpec.from_params(params) == spec and RunSpec.from_params(params).key == spec.key
    one_sample = validate({}).specs()[0]
    assert "batch_size" not in one_sample.params()  # it does not apply there
    assert RunSpec.from_params(one_sample.params()) == one_sample


@pytest.mark.parametrize("round_trip", [False, True])
def test_schedule_free_evaluates_and_checkpoints_its_averaged_weights(round_trip):
    """Evaluated every 2 steps, the run trains as if it never were (the training weights come back exactly);
    with round_trip_evaluation (records from before), as optimizer.train() computes them back."""
    from tinytrain.optimizers import build_optimizer

    net = LeNet()
    optimizer = build_optimizer("schedulefree-adamw", list(net.named_parameters()), 1e-3, {})
    assert optimizer.param_groups[0]["train_mode"]
    with evaluation_mode(optimizer):
        assert not optimizer.param_groups[0]["train_mode"]
    assert optimizer.param_groups[0]["train_mode"]
    spec = replace(digits_spec(optimizer="schedulefree-adamw", steps=4), round_trip_evaluation=round_trip)
    result = train(spec)
    # the checkpoint is what optimizer.eval() puts in the net: replay the run and switch by hand
    torch.manual_seed(0)
    net = LeNet()
    optimizer = build_optimizer(spec.kind, list(net.named_parameters()), spec.lr, spec.optimizer_kwargs)
    batches = make_problem(spec).batches(0)
    for step in range(4):
        if round_trip and step % 2 == 0:  # evaluated at steps 0 and 2: the round trip of records from before
            optimizer.eval()
            optimizer.train()
        x, labels = next(batches)
        optimizer.zero_grad()
        F.mse_loss(net(x), F.one_hot(labels, 10).float()).backward()
        optimizer.step()
    trained = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    optimizer.eval()
    assert all(torch.equal(result.final_weights[k], v) for k, v in net.state_dict().items())
    assert not all(torch.equal(trained[k], v) for k, v in net.state_dict().items())
    assert math.isfinite(result.final_loss)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_gradcheck_passes_on_a_fixed_digits_minibatch(loss):
    from tinytrain.gradcheck import gradient_check

    checks = gradient_check(problem="digits", loss=loss, batch_size=4, entries_per_tensor=8)
    assert len(checks) == 10 and all(check.passed(1e-4) for check in checks)


def test_a_validation_split_comes_out_of_the_training_images_and_leaves_the_test_set_as_it_was():
    """validation = 0 is the split runs had before it existed; above 0 it holds images out of the 1,437 training
    images only, stratified and decided by data_seed, so the test set of a run with validation is the same."""
    (train_x, train_y), none, (test_x, test_y) = digits.load(0)
    (fewer_x, fewer_y), (val_x, val_y), (same_test_x, same_test_y) = digits.load(0, 0.2)
    assert none is None and torch.equal(test_x, same_test_x) and torch.equal(test_y, same_test_y)
    assert len(fewer_y) == digits_training_images(0.2) and len(fewer_y) + len(val_y) == DIGITS_TRAINING_IMAGES
    rows = {tuple(image.flatten().tolist()) for image in train_x}
    assert all(tuple(image.flatten().tolist()) in rows for image in val_x)  # out of the training images
    assert not {tuple(image.flatten().tolist()) for image in val_x} & {tuple(i.flatten().tolist()) for i in fewer_x}
    for label, count in Counter(val_y.tolist()).items():  # stratified
        assert abs(count - 0.2 * Counter(train_y.tolist())[label]) <= 1


def test_a_digits_run_with_validation_measures_both_sets_and_one_without_keeps_its_key():
    from tinytrain.engines.sequential import train
    from tinytrain.spec import validate

    raw = {"problem": "digits", "steps": 4, "eval_every": 2, "grid": {"optimizer": ["adam"]}}
    old, new = validate(raw).specs()[0], validate({**raw, "validation": 0.2}).specs()[0]
    assert "validation" not in str(old.key) and old.key != new.key
    assert old.key == validate({**raw, "validation": 0.0}).specs()[0].key  # the default: the key without it
    result = train(new)
    assert set(result.metrics) == {"val_loss", "val_accuracy", "test_loss", "test_accuracy"}
    assert sorted(result.metrics["val_loss"]) == [0, 2, 4]
    logged = result.logged_metrics()
    assert logged["final_val_accuracy"] == [(4, result.metrics["val_accuracy"][4])]
    assert set(train(old).metrics) == {"test_loss", "test_accuracy"}
