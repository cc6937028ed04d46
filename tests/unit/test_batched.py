"""The vectorised engine (tinytrain.engines.batched): the same bits as the sequential engine, many cells at once.

Every comparison is exact (== on losses, torch.equal on weights), never a tolerance: each stacked optimizer
update against torch.optim step by step, for every optimizer and every hyperparameter; whole batches,
sub-batches and worker processes against train.train; a diverging cell must neither stop nor touch the
others; the engine falls back to the sequential one for small batches and says so. Grids are shrunk (few
steps, few cells) so that the file runs in seconds.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tinytrain.engines.batched import (
    ROW_LENGTH,
    cell_parameters,
    initial_weights,
    train_batch,
    train_cells,
)
from tinytrain.engines.batched_updates import UPDATE_RULE_OF_KIND, UPDATE_RULES
from tinytrain.engines.planner import MIN_BATCH_CELLS, SUB_BATCH_CELLS, plan_batches, sub_batches
from tinytrain.engines.sequential import initial_net, train
from tinytrain.executors import InProcess, ProcessPool
from tinytrain.model import LeNet
from tinytrain.optimizers import build_optimizer
from tinytrain.results import DIVERGED, FAILED, FINISHED, RunResult
from tinytrain.spec import RunSpec, load_experiment, validate

GRID = "experiments/optimizer-grid.toml"


def same_weights(a: dict[str, torch.Tensor] | None, b: dict[str, torch.Tensor] | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def same_losses(a: list[float], b: list[float]) -> bool:
    """Equal bit for bit, a NaN equal to a NaN (a diverged run may end on one)."""
    return len(a) == len(b) and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))


def assert_same_bits(got: RunResult, expected: RunResult) -> None:
    """Everything a run logs, exactly: losses, outcome, final weights and every checkpoint."""
    name = got.spec.run_name
    assert got.outcome == expected.outcome, name
    assert same_losses(got.losses, expected.losses), name
    assert same_weights(got.final_weights, expected.final_weights), name
    assert sorted(got.checkpoints) == sorted(expected.checkpoints), name
    assert all(same_weights(got.checkpoints[step], expected.checkpoints[step]) for step in expected.checkpoints)


def sequential(spec: RunSpec) -> RunResult:
    return train(replace(spec, engine="sequential"))


def in_order(specs: list[RunSpec]) -> list[RunResult]:
    """train_batch's results (handed over as cells end) in the specs' order."""
    by_spec = {result.spec: result for result in train_batch(specs)}
    return [by_spec[spec] for spec in specs]


def grid_specs(*overrides: str) -> list[RunSpec]:
    from tinytrain.spec import PROJECT_ROOT

    return load_experiment(PROJECT_ROOT / GRID, list(overrides)).specs()


def cell(optimizer: str = "adam", lr: float = 1e-3, seed: int = 0, variant: dict | None = None, **settings) -> RunSpec:
    """One spec; `variant` gives the optimizer non-default hyperparameters."""
    name = optimizer if variant is None else "variant"
    # The bound off unless a test sets it: these tests are about the batch, and some of their cells spike past
    # 1e3 x their initial loss early (both engines apply the same bound: test_the_bound_is_the_same_in_a_batch).
    raw: dict = {
        "engine": "vmap",
        "diverge_above": math.inf,
        **settings,
        "grid": {"optimizer": [name], "lr": [lr], "seed": [seed]},
    }
    if variant is not None:
        raw["optimizers"] = {"variant": {"type": optimizer, **variant}}
    return validate(raw).specs()[0]


# ---------------------------------------------------------------------------------------------------------
# Stacked updates against torch.optim

# Per update rule: cells with non-default hyperparameters, mixed within the rule so that every per-cell
# branch (momentum or not, nesterov, amsgrad, centered, maximize, coupled or decoupled decay) is exercised.
UPDATE_CASES = {
    "sgd": [
        cell("sgd", 0.05),
        cell("sgd", 0.02, variant={"momentum": 0.9}),
        cell("sgd", 0.03, variant={"momentum": 0.5, "dampening": 0.3, "weight_decay": 0.01}),
        cell("sgd", 0.01, variant={"momentum": 0.8, "nesterov": True, "weight_decay": 0.1}),
        cell("sgd", 0.02, variant={"maximize": True, "weight_decay": 0.2}),
    ],
    "adam": [
        cell("adam", 1e-3),
        cell("adamw", 1e-2),
        cell("adam", 3e-3, variant={"weight_decay": 0.1, "amsgrad": True}),
        cell(
            "adam",
            2e-3,
            variant={"weight_decay": 0.1, "decoupled_weight_decay": True, "betas": [0.8, 0.95], "eps": 1e-6},
        ),
        cell("adamw", 5e-2, variant={"maximize": True, "amsgrad": True, "weight_decay": 0.3}),
    ],
    "rmsprop": [
        cell("rmsprop", 1e-2),
        cell("rmsprop", 1e-3, variant={"centered": True}),
        cell("rmsprop", 1e-2, variant={"momentum": 0.9}),
        cell(
            "rmsprop", 3e-3, variant={"momentum": 0.5, "centered": True, "weight_decay": 0.1, "alpha": 0.9, "eps": 1e-5}
        ),
        cell("rmsprop", 1e-2, variant={"maximize": True}),
    ],
    "adagrad": [
        cell("adagrad", 1e-2),
        cell(
            "adagrad",
            0.1,
            variant={"lr_decay": 0.1, "weight_decay": 0.01, "initial_accumulator_value": 0.5, "eps": 1e-6},
        ),
        cell("adagrad", 5e-2, variant={"maximize": True}),
    ],
}


def test_update_cases_cover_every_kind_and_hyperparameter():
    """Every kind is tested, and every hyperparameter of a rule differs from its default in some case."""
    from tinytrain.optimizers import OPTIMIZERS, VMAP_KINDS

    # the kinds spec.py lets the vmap engine take are those it has a stacked update for
    assert set(VMAP_KINDS) == set(UPDATE_RULE_OF_KIND) <= set(OPTIMIZERS)
    assert {spec.kind for specs in UPDATE_CASES.values() for spec in specs} == set(VMAP_KINDS)
    for rule, specs in UPDATE_CASES.items():
        kinds = [kind for kind, rule_of_kind in UPDATE_RULE_OF_KIND.items() if rule_of_kind == rule]
        offered = {name for kind in kinds for name in OPTIMIZERS[kind][2]}
        varied = {
            name for spec in specs for name, value in spec.hyperparameters if value != OPTIMIZERS[spec.kind][2][name]
        }
        assert varied == offered, f"{rule}: no case varies {sorted(offered - varied)}"


# Cells whose sqrt must not take the floor (StackedUpdate.sqrt): an eps too small to absorb sqrt(TINY), and
# an RMSprop alpha above 1, whose square average can turn negative.
UNFLOORED_CASES = {
    "adam": [cell("adam", 1e-3, variant={"eps": 1e-30}), cell("adamw", 1e-3, variant={"eps": 0.0})],
    "rmsprop": [cell("rmsprop", 1e-3, variant={"alpha": 1.5}), cell("rmsprop", 1e-3, 1)],
    "adagrad": [cell("adagrad", 1e-2, variant={"eps": 0.0}), cell("adagrad", 1e-2, 1)],
}


def update_cases() -> list[tuple[str, list[RunSpec]]]:
    return [
        *((rule, UPDATE_CASES[rule]) for rule in sorted(UPDATE_CASES)),
        *((f"{rule}-unfloored", UNFLOORED_CASES[rule]) for rule in sorted(UNFLOORED_CASES)),
    ]


@pytest.mark.parametrize(("name", "cells"), update_cases(), ids=[name for name, _ in update_cases()])
def test_stacked_update_follows_torch_optim_step_by_step(name, cells):
    """The same gradients into torch.optim (one LeNet per cell) and the stacked update: same weights, also
    after the first cell is dropped at step 3 (as the engine drops a cell that ended), and whether or not
    its sqrt takes the floor. The gradients have exact zeros (a dead unit) so that the floor matters."""
    rule = name.removesuffix("-unfloored")
    assert all(UPDATE_RULE_OF_KIND[spec.kind] == rule for spec in cells)
    weights = initial_weights(cells)
    update = UPDATE_RULES[rule](cells)
    nets = [initial_net(spec) for spec in cells]
    optimizers = [
        build_optimizer(spec.kind, net.parameters(), spec.lr, spec.optimizer_kwargs)
        for spec, net in zip(cells, nets, strict=True)
    ]
    generator = torch.Generator().manual_seed(0)
    for step in range(6):
        if step == 3:
            update.keep(range(1, len(cells)))
            cells, weights, nets, optimizers = cells[1:], weights[1:].clone(), nets[1:], optimizers[1:]
        gradients = torch.zeros(len(cells), ROW_LENGTH)
        for row, net in enumerate(nets):
            pieces = cell_parameters(gradients[row]).values()
            for piece, parameter in zip(pieces, net.parameters(), strict=True):
                parameter.grad = torch.randn(parameter.shape, generator=generator) * 10.0 ** -(step % 3)
                parameter.grad[..., :2] = 0.0  # never a gradient: zeros in the optimizer's state
                piece.copy_(parameter.grad)
        update.step(weights, gradients)
        for optimizer in optimizers:
            optimizer.step()
        for row, net in enumerate(nets):
            for (name, expected), got in zip(
                net.named_parameters(), cell_parameters(weights[row]).values(), strict=True
            ):
                # as bits (int32): a NaN equals a NaN, and -0.0 differs from 0.0
                assert torch.equal(got.view(torch.int32), expected.detach().view(torch.int32)), (
                    f"cell {row} {name} step {step}"
                )


def test_the_sqrt_floor_is_taken_only_where_it_keeps_every_bit():
    """StackedUpdate.sqrt: on zeros, subnormals, NaN, inf and normal numbers, `sqrt(v) / d + eps` has the bits
    of torch.sqrt's, with the floor where the check allows it (default eps) and without it where it does not."""
    from tinytrain.engines.batched_updates import TINY, column

    values = torch.tensor(
        [0.0, -0.0, 1e-45, 1e-40, TINY / 2, TINY, 2 * TINY, 1e-30, 1e-12, 0.5, 3.0, float("inf"), float("nan")]
    ).repeat(2, 1)
    divisor = column([0.0316227766, 1.0])
    cases = {
        "adam": (UPDATE_CASES["adam"][:2], True),
        "adam-unfloored": (UNFLOORED_CASES["adam"], False),
        "adagrad": (UPDATE_CASES["adagrad"][:2], True),
    }
    for name, (cells, floored) in cases.items():
        update = UPDATE_RULES[name.removesuffix("-unfloored")](cells)
        for d in (divisor, None):
            got = update.sqrt(values, "denom", d)
            got = (got if d is None else got.div(d)).add(update.eps)
            expected = (torch.sqrt(values) if d is None else torch.sqrt(values).div(d)).add(update.eps)
            assert torch.equal(got.nan_to_num(-1.0), expected.nan_to_num(-1.0)), (name, d)
            assert (update.floor_exact is floored) if d is None else True
    rmsprop = UPDATE_RULES["rmsprop"](UNFLOORED_CASES["rmsprop"])
    assert rmsprop.never_negative is False
    negative = torch.tensor([[-1.0, 0.0], [4.0, 0.0]])
    assert torch.equal(rmsprop.sqrt(negative, "avg").isnan(), torch.tensor([[True, False], [False, False]]))


def test_every_tensor_and_list_of_a_stacked_update_is_per_cell():
    """keep() cuts every tensor and list attribute to the kept cells: each must have one row or item a cell."""
    for rule, cells in UPDATE_CASES.items():
        update = UPDATE_RULES[rule](cells)
        update.step(initial_weights(cells), torch.ones(len(cells), ROW_LENGTH))
        sized = {name: len(value) for name, value in vars(update).items() if isinstance(value, torch.Tensor | list)}
        assert sized and set(sized.values()) == {len(cells)}, (rule, sized)
        update.keep([0, 2])
        assert {len(value) for value in vars(update).values() if isinstance(value, torch.Tensor | list)} == {2}


# ---------------------------------------------------------------------------------------------------------
# Whole batches against the sequential engine, bit for bit


def test_every_optimizer_and_hyperparameter_gives_the_sequential_engines_bits():
    """Every case above (all five optimizers, every hyperparameter off its default: nesterov, amsgrad,
    centered, momentum, dampening, maximize, weight_decay coupled and decoupled, lr_decay, ...) in one
    batch: every loss, the final weights and the checkpoints equal train.train's."""
    specs = [replace(spec, steps=6, checkpoint_every=4) for specs in UPDATE_CASES.values() for spec in specs]
    for spec, got in zip(specs, in_order(specs), strict=True):
        assert got.runtime["engine"] == "vmap"
        assert_same_bits(got, sequential(spec))


def test_the_default_grid_in_its_sub_batches_gives_the_sequential_engines_bits():
    """The default grid's 45 cells as the sweep trains them (the plan's sub-batches): identical bits."""
    specs = grid_specs("steps=12", "engine=vmap")
    plan = plan_batches(specs)
    assert not plan.sequential and [len(batch) for batch in plan.batches] == [9] * 5
    results = {result.spec: result for batch in plan.batches for result in train_batch(batch)}
    assert len(results) == 45
    for spec in specs:
        assert_same_bits(results[spec], sequential(spec))


def test_final_weights_are_a_state_dict_that_gives_the_final_loss():
    from tinytrain.engines.sequential import evaluate

    (result,) = train_batch([cell("adam", 1e-2, 3, steps=4)])
    assert list(result.final_weights) == list(LeNet().state_dict())
    assert evaluate(result.final_weights, 0, 3) == result.final_loss


# ---------------------------------------------------------------------------------------------------------
# Divergence, mixed steps, checkpoints


def test_a_cell_diverging_mid_batch_is_handed_over_at_once_and_leaves_the_others_untouched():
    """sgd at lr 1e3 diverges after two steps: its result comes out of the batch first, while the others
    still train, with the sequential engine's bits; the others have exactly the sequential engine's bits."""
    others = [
        cell("adam", 1e-3, 0, steps=10),
        cell("sgd", 0.01, 1, steps=10, variant={"momentum": 0.9}),
        cell("rmsprop", 1e-2, 2, steps=10, variant={"centered": True}),
    ]
    wild = cell("sgd", 1e3, 0, steps=10)
    batch = train_batch([others[0], wild, *others[1:]])
    first = next(batch)
    assert first.spec == wild and first.outcome == DIVERGED
    assert first.final_weights is None and first.checkpoints == {} and len(first.losses) < 10
    assert_same_bits(first, sequential(wild))
    rest = list(batch)
    assert [result.spec for result in rest] == others
    for result in rest:
        assert result.outcome == FINISHED and len(result.losses) == 11
        assert_same_bits(result, sequential(result.spec))


def test_cells_of_one_batch_may_have_different_steps():
    """A cell stops when its own steps are done, and is handed over then: the sequential engine's bits."""
    mixed = [cell("adam", 1e-3, 0, steps=3), cell("sgd", 0.05, 1, steps=7), cell("rmsprop", 1e-2, 2, steps=12)]
    results = list(train_batch(mixed))
    assert [result.spec for result in results] == mixed  # in the order they end
    assert [len(result.losses) for result in results] == [4, 8, 13]
    for spec, result in zip(mixed, results, strict=True):
        assert_same_bits(result, sequential(spec))


def test_checkpoints_every_n_steps_as_the_sequential_engine():
    specs = [
        cell("adam", 1e-2, 0, steps=7, checkpoint_every=3),
        cell("sgd", 0.1, 1, steps=5, checkpoint_every=2),
        cell("rmsprop", 1e-3, 2, steps=7),
    ]
    results = in_order(specs)
    assert [sorted(result.checkpoints) for result in results] == [[3, 6], [2, 4], []]
    for spec, result in zip(specs, results, strict=True):
        assert_same_bits(result, sequential(spec))


# ---------------------------------------------------------------------------------------------------------
# Sub-batches, the fallback, the executors


def test_sub_batches_are_as_equal_as_can_be_and_keep_the_grids_order():
    specs = grid_specs("engine=vmap")
    assert [len(batch) for batch in sub_batches(specs)] == [9] * 5
    assert [len(batch) for batch in sub_batches(specs[:20])] == [6, 7, 7]
    assert [len(batch) for batch in sub_batches(specs, workers=2)] == [7, 8, 7, 8, 7, 8]
    assert [spec for batch in sub_batches(specs, 4) for spec in batch] == specs
    assert all(len(batch) <= SUB_BATCH_CELLS for batch in plan_batches(specs).batches)


def test_a_group_too_small_to_gain_trains_sequentially_and_says_why(monkeypatch):
    """Fewer cells than MIN_BATCH_CELLS (1 on this machine, where one cell already gains; 3 here): the
    sequential engine trains them, with the same bits; the spec, its engine param and its run key stay those
    of the vmap cell asked for, and its tags say what trained it and why."""
    import tinytrain.engines.planner as batching

    monkeypatch.setattr(batching, "MIN_BATCH_CELLS", 3)
    specs = [cell("adam", 1e-3, seed, steps=3) for seed in range(2)]
    plan = plan_batches(specs)
    assert plan.batches == [] and plan.sequential == specs
    results = list(InProcess().run(specs, lambda spec: None))
    for spec, result in zip(specs, results, strict=True):
        assert result.spec == spec and result.spec.engine == "vmap" and result.spec.params()["engine"] == "vmap"
        assert result.runtime["engine"] == "sequential"
        assert result.runtime["engine_reason"] == "2 cell(s) to batch, fewer than the 3 at which the vmap engine gains"
        assert_same_bits(result, sequential(spec))
    enough = [cell("adam", 1e-3, seed, steps=3) for seed in range(3)]
    assert [result.runtime["engine"] for result in InProcess().run(enough, lambda spec: None)] == ["vmap"] * 3


def test_cells_of_an_optimizer_without_a_stacked_update_train_sequentially(monkeypatch):
    import tinytrain.engines.planner as batching

    assert MIN_BATCH_CELLS == 1 and set(batching.VMAP_KINDS) == set(UPDATE_RULE_OF_KIND)
    monkeypatch.setattr(batching, "VMAP_KINDS", ("sgd", "adam"))  # spec.py refuses the others for vmap today
    specs = [cell("adam", 1e-3, 0, steps=3), cell("adagrad", 1e-2, 0, steps=3)]
    by_spec = {result.spec: result for result in InProcess().run(specs, lambda spec: None)}
    assert by_spec[specs[0]].runtime["engine"] == "vmap" and "engine_reason" not in by_spec[specs[0]].runtime
    assert by_spec[specs[1]].runtime["engine"] == "sequential"
    assert by_spec[specs[1]].runtime["engine_reason"] == "the vmap engine has no stacked update for adagrad"


def test_the_same_batch_twice_gives_the_same_bits():
    specs = grid_specs("steps=6", "engine=vmap", "seed=0")
    for a, b in zip(in_order(specs), in_order(specs), strict=True):
        assert_same_bits(a, b)
    assert all(result.runtime["torch_threads"] == "1" for result in in_order(specs[:2]))


def test_specs_are_split_by_runtime_and_problem():
    specs = [
        cell("adam", 1e-3, 0, steps=3),
        cell("sgd", 0.1, 0, steps=3, data_seed=1),
        cell("rmsprop", 1e-2, 1, steps=3, target_index=7),
        cell("adam", 1e-2, 2, steps=3),
    ]
    results = in_order(specs)
    assert [result.runtime["batch_cells"] for result in results] == ["2", "1", "1", "2"]
    keys = [result.runtime["batch_key"] for result in results]
    assert keys[0] == keys[3] and len(set(keys)) == 3
    for spec, result in zip(specs, results, strict=True):
        assert_same_bits(result, sequential(spec))


def test_train_cells_refuses_cells_that_cannot_share_a_batch():
    with pytest.raises(ValueError, match="must share threads, mkldnn, data_seed and target_index"):
        list(train_cells([cell(steps=2), cell(steps=2, data_seed=1)]))


def test_an_error_fails_only_the_cells_of_its_batch_not_yet_handed_over(monkeypatch):
    """A batch that raises mid-way: the cell that diverged before keeps its result, the rest are FAILED,
    and another batch (another data_seed) trains as ever."""
    from tinytrain.engines.batched_net import BatchedNet

    real = BatchedNet.losses_and_gradients
    calls = {"count": 0}

    def failing_at_step_5(self, weights):
        calls["count"] += 1
        if self.target[0, 7] == 1 and calls["count"] >= 5:
            raise RuntimeError("out of memory")
        return real(self, weights)

    monkeypatch.setattr(BatchedNet, "losses_and_gradients", failing_at_step_5)
    wild, tame = cell("sgd", 1e3, 0, steps=8, target_index=7), cell("adam", 1e-3, 1, steps=8, target_index=7)
    other = cell("adam", 1e-3, 1, steps=3)
    results = in_order([wild, tame, other])
    assert [result.outcome for result in results] == [DIVERGED, FAILED, FINISHED]
    assert results[1].error == "RuntimeError: out of memory" and results[1].losses == []


def test_the_in_process_executor_hands_vmap_specs_to_the_engine():
    specs = [cell("adam", 1e-3, seed, steps=2) for seed in range(3)] + [
        replace(cell("sgd", 0.1, 0, steps=2), engine="sequential")
    ]
    started = []
    results = list(InProcess().run(specs, started.append))
    assert sorted(started, key=specs.index) == specs
    by_spec = {result.spec: result for result in results}
    assert all(by_spec[spec].runtime["engine"] == "vmap" for spec in specs[:-1])
    assert by_spec[specs[-1]].runtime["engine"] == "sequential" and "engine_reason" not in by_spec[specs[-1]].runtime


def test_a_pool_trains_vmap_sub_batches_on_its_workers_with_the_same_bits():
    """--engine vmap --jobs 2: sub-batches, as many for each worker; every number equals the sequential
    engine's (a cell's result does not depend on its batch)."""
    specs = grid_specs("steps=5", "engine=vmap", "seed=0", "optimizer=sgd,sgd-momentum,adam,adamw,rmsprop,adagrad")
    pool = ProcessPool(2)
    try:
        started = []
        results = list(pool.run(specs, started.append))
    finally:
        pool.close()
    assert sorted(started, key=specs.index) == specs
    by_spec = {result.spec: result for result in results}
    assert set(by_spec) == set(specs)
    batch_keys = {by_spec[spec].runtime["batch_key"] for spec in specs}
    assert len(batch_keys) == 2 and {by_spec[spec].runtime["batch_cells"] for spec in specs} == {"9"}
    for spec in specs:
        assert_same_bits(by_spec[spec], sequential(spec))


def test_the_bound_is_the_same_in_a_batch():
    """diverge_above ends a cell in a batch where it ends the sequential run: rmsprop at lr 0.1 spikes past
    1e3 x its initial loss and stays finite; both engines stop it at that step, with the same losses."""
    spiking = cell("rmsprop", 0.1, 0, steps=100, diverge_above=1e3)
    calm = cell("adam", 1e-3, 1, steps=100, diverge_above=1e3)
    expected = {spec: sequential(spec) for spec in (spiking, calm)}
    assert expected[spiking].outcome == DIVERGED and len(expected[spiking].losses) < 101
    assert all(map(math.isfinite, expected[spiking].losses)) and expected[calm].outcome == FINISHED
    for got in train_batch([spiking, calm]):
        assert_same_bits(got, expected[got.spec])
