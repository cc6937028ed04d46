"""The vectorised engine (tinytrain.vmap): the same numbers as the sequential engine, many cells at once.

Each stacked optimizer update is checked against torch.optim step by step; whole batches against
train.train; divergence of one cell must neither stop nor touch the others; a batch run twice gives the
same bits. Grids are shrunk (few steps) so that the file runs in seconds.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tinytrain.executors import InProcess, ProcessPool
from tinytrain.model import LeNet
from tinytrain.optimizers import build_optimizer
from tinytrain.results import CONVERGED, DIVERGED, FAILED
from tinytrain.spec import RunSpec, load_experiment, validate
from tinytrain.train import initial_net, train
from tinytrain.vmap import (
    ROW_LENGTH,
    cell_parameters,
    initial_weights,
    train_batch,
    train_cells,
)
from tinytrain.vmap_optim import UPDATE_RULE_OF_KIND, UPDATE_RULES

GRID = "experiments/optimizer-grid.toml"


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def grid_specs(*overrides: str) -> list[RunSpec]:
    from tinytrain.spec import PROJECT_ROOT

    return load_experiment(PROJECT_ROOT / GRID, list(overrides)).specs()


def cell(optimizer: str = "adam", lr: float = 1e-3, seed: int = 0, variant: dict | None = None,
         **settings) -> RunSpec:
    """One spec; `variant` gives the optimizer non-default hyperparameters."""
    name = optimizer if variant is None else "variant"
    raw: dict = {"engine": "vmap", **settings, "grid": {"optimizer": [name], "lr": [lr], "seed": [seed]}}
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
        cell("adam", 2e-3, variant={"weight_decay": 0.1, "decoupled_weight_decay": True, "betas": [0.8, 0.95],
                                    "eps": 1e-6}),
        cell("adamw", 5e-2, variant={"maximize": True, "amsgrad": True, "weight_decay": 0.3}),
    ],
    "rmsprop": [
        cell("rmsprop", 1e-2),
        cell("rmsprop", 1e-3, variant={"centered": True}),
        cell("rmsprop", 1e-2, variant={"momentum": 0.9}),
        cell("rmsprop", 3e-3, variant={"momentum": 0.5, "centered": True, "weight_decay": 0.1, "alpha": 0.9,
                                       "eps": 1e-5}),
        cell("rmsprop", 1e-2, variant={"maximize": True}),
    ],
    "adagrad": [
        cell("adagrad", 1e-2),
        cell("adagrad", 0.1, variant={"lr_decay": 0.1, "weight_decay": 0.01, "initial_accumulator_value": 0.5,
                                      "eps": 1e-6}),
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
        varied = {name for spec in specs for name, value in spec.hyperparameters
                  if value != OPTIMIZERS[spec.kind][2][name]}
        assert varied == offered, f"{rule}: no case varies {sorted(offered - varied)}"


@pytest.mark.parametrize("rule", sorted(UPDATE_CASES))
def test_stacked_update_follows_torch_optim_step_by_step(rule):
    """The same gradients into torch.optim (one LeNet per cell) and the stacked update: same weights."""
    cells = UPDATE_CASES[rule]
    assert all(UPDATE_RULE_OF_KIND[spec.kind] == rule for spec in cells)
    weights = initial_weights(cells)
    update = UPDATE_RULES[rule](cells)
    nets = [initial_net(spec) for spec in cells]
    optimizers = [build_optimizer(spec.kind, net.parameters(), spec.lr, spec.optimizer_kwargs)
                  for spec, net in zip(cells, nets, strict=True)]
    generator = torch.Generator().manual_seed(0)
    for step in range(6):
        gradients = torch.zeros(len(cells), ROW_LENGTH)
        for row, net in enumerate(nets):
            pieces = cell_parameters(gradients[row]).values()
            for piece, parameter in zip(pieces, net.parameters(), strict=True):
                parameter.grad = torch.randn(parameter.shape, generator=generator) * 10.0 ** -(step % 3)
                piece.copy_(parameter.grad)
        update.step(weights, gradients)
        for optimizer in optimizers:
            optimizer.step()
        for row, net in enumerate(nets):
            for (name, expected), got in zip(net.named_parameters(), cell_parameters(weights[row]).values(),
                                             strict=True):
                assert torch.equal(got, expected.detach()), f"cell {row} {name} step {step}"


# ---------------------------------------------------------------------------------------------------------
# Whole batches against the sequential engine


def test_losses_match_the_sequential_engine_on_the_default_grid():
    """Every cell of the default grid (20 steps): every loss and weight bit for bit, the same outcome."""
    sequential = [train(spec) for spec in grid_specs("steps=20")]
    batched = train_batch(grid_specs("steps=20", "engine=vmap"))
    assert len(batched) == len(sequential) == 45
    for expected, got in zip(sequential, batched, strict=True):
        assert got.spec.run_name == expected.spec.run_name and got.spec.engine == "vmap"
        assert got.outcome == expected.outcome
        assert len(got.losses) == len(expected.losses) == 21
        assert got.losses == expected.losses, got.spec.run_name
        assert (got.final_weights is None) == (expected.final_weights is None)
        if expected.final_weights is not None:
            assert same_weights(got.final_weights, expected.final_weights), got.spec.run_name


def test_default_runtime_gives_the_sequential_engines_bits():
    """At the default runtime (one thread, mkldnn off) each row lies 64-byte aligned like a tensor of its
    own, and the batched kernels give the sequential engine's bits: losses and weights identical."""
    cases = [("sgd", 0.1, 0), ("adam", 1e-3, 1), ("adamw", 0.1, 2), ("rmsprop", 1e-2, 0), ("adagrad", 0.1, 3)]
    specs = [cell(optimizer, lr, seed, steps=8) for optimizer, lr, seed in cases]
    for expected, got in zip((train(spec) for spec in specs), train_batch(specs), strict=True):
        assert got.losses == expected.losses, got.spec.run_name
        assert same_weights(got.final_weights, expected.final_weights)


@pytest.mark.parametrize("rule", sorted(UPDATE_CASES))
def test_non_default_hyperparameters_give_the_sequential_engines_bits(rule):
    """nesterov, amsgrad, centered, maximize, weight decay, dampening, lr decay, ...: each cell of the update
    cases, batched with the others of its rule and checkpointed, equals the sequential engine bit for bit."""
    specs = [replace(spec, steps=8, checkpoint_every=3) for spec in UPDATE_CASES[rule]]
    for spec, got in zip(specs, train_batch(specs), strict=True):
        expected = train(replace(spec, engine="sequential"))
        assert got.outcome == expected.outcome and got.losses == expected.losses, spec.optimizer_kwargs
        if expected.final_weights is not None:
            assert same_weights(got.final_weights, expected.final_weights), spec.optimizer_kwargs
        assert sorted(got.checkpoints) == sorted(expected.checkpoints)
        for step, weights in expected.checkpoints.items():
            assert same_weights(got.checkpoints[step], weights), (spec.optimizer_kwargs, step)


def test_final_weights_are_a_state_dict_that_gives_the_final_loss():
    from tinytrain.train import evaluate

    (result,) = train_batch([cell("adam", 1e-2, 3, steps=4)])
    assert list(result.final_weights) == list(LeNet().state_dict())
    assert evaluate(result.final_weights, 0, 3) == result.final_loss


# ---------------------------------------------------------------------------------------------------------
# Divergence, mixed steps, checkpoints


def test_a_diverging_cell_ends_alone_and_leaves_the_others_untouched():
    """sgd at lr 1e3 diverges after two steps: it ends as diverged, the batch goes on, and the other cells
    have exactly the bits they have when a tame cell takes its place."""
    others = [cell("adam", 1e-3, 0, steps=10), cell("sgd", 0.01, 1, steps=10, variant={"momentum": 0.9}),
              cell("rmsprop", 1e-2, 2, steps=10)]
    wild, tame = cell("sgd", 1e3, 0, steps=10), cell("sgd", 1e-3, 0, steps=10)
    with_wild = train_batch([others[0], wild, *others[1:]])
    with_tame = train_batch([others[0], tame, *others[1:]])

    diverged = with_wild[1]
    sequential = train(replace(wild, engine="sequential"))
    assert diverged.outcome == sequential.outcome == DIVERGED
    assert diverged.final_weights is None and diverged.checkpoints == {}
    assert len(diverged.losses) == len(sequential.losses) < 10
    assert not math.isfinite(diverged.losses[-1]) and all(math.isfinite(v) for v in diverged.losses[:-1])
    assert diverged.losses[:-1] == sequential.losses[:-1]

    for index in (0, 2, 3):
        result, reference = with_wild[index], with_tame[index]
        assert result.outcome == CONVERGED and len(result.losses) == 11
        assert result.losses == reference.losses, result.spec.run_name
        assert same_weights(result.final_weights, reference.final_weights)


def test_cells_of_one_batch_may_have_different_steps():
    """A cell stops when its own steps are done: its losses and weights are those of a batch that ends
    with it, and of the sequential engine."""
    mixed = [cell("adam", 1e-3, 0, steps=3), cell("sgd", 0.05, 1, steps=7),
             cell("rmsprop", 1e-2, 2, steps=12)]
    results = train_batch(mixed)
    assert [len(result.losses) for result in results] == [4, 8, 13]
    assert all(result.outcome == CONVERGED and result.final_weights is not None for result in results)
    for spec, result in zip(mixed, results, strict=True):
        same_steps = [replace(other, steps=spec.steps) for other in mixed]
        in_batch_of_equal_steps = train_batch(same_steps)[mixed.index(spec)]
        assert result.losses == in_batch_of_equal_steps.losses
        sequential = train(replace(spec, engine="sequential"))
        assert result.losses == sequential.losses


def test_checkpoints_every_n_steps_as_the_sequential_engine():
    specs = [cell("adam", 1e-2, 0, steps=7, checkpoint_every=3),
             cell("sgd", 0.1, 1, steps=5, checkpoint_every=2), cell("rmsprop", 1e-3, 2, steps=7)]
    results = train_batch(specs)
    assert [sorted(result.checkpoints) for result in results] == [[3, 6], [2, 4], []]
    for spec, result in zip(specs, results, strict=True):
        sequential = train(replace(spec, engine="sequential"))
        assert sorted(sequential.checkpoints) == sorted(result.checkpoints)
        for step, weights in sequential.checkpoints.items():
            assert same_weights(result.checkpoints[step], weights), (spec.run_name, step)


# ---------------------------------------------------------------------------------------------------------
# Determinism, batching and the executor


@pytest.mark.parametrize("runtime", [{}, {"threads": 2, "mkldnn": True}], ids=["default", "threads2-mkldnn"])
def test_the_same_batch_twice_gives_the_same_bits(runtime):
    specs = [replace(spec, **runtime) for spec in grid_specs("steps=6", "engine=vmap", "seed=0")]
    first, second = train_batch(specs), train_batch(specs)
    for a, b in zip(first, second, strict=True):
        assert a.losses == b.losses, a.spec.run_name
        assert same_weights(a.final_weights, b.final_weights)
    assert first[0].runtime["torch_threads"] == str(runtime.get("threads", 1))


def test_specs_are_split_by_runtime_and_problem_and_results_keep_their_order():
    specs = [cell("adam", 1e-3, 0, steps=3), cell("sgd", 0.1, 0, steps=3, data_seed=1),
             cell("rmsprop", 1e-2, 1, steps=3, target_index=7), cell("adam", 1e-2, 2, steps=3)]
    results = train_batch(specs)
    assert [result.spec for result in results] == specs
    assert [result.runtime["batch_cells"] for result in results] == ["2", "1", "1", "2"]
    keys = [result.runtime["batch_key"] for result in results]
    assert keys[0] == keys[3] and len(set(keys)) == 3
    for spec, result in zip(specs, results, strict=True):
        assert result.losses == train(replace(spec, engine="sequential")).losses


def test_train_cells_refuses_cells_that_cannot_share_a_batch():
    with pytest.raises(ValueError, match="must share threads, mkldnn, data_seed and target_index"):
        train_cells([cell(steps=2), cell(steps=2, data_seed=1)])


def test_an_error_fails_its_sub_batch_only(monkeypatch):
    import tinytrain.vmap as vmap_engine

    real_train_cells = vmap_engine.train_cells

    def failing_for_data_seed_1(specs):
        if specs[0].data_seed == 1:
            raise RuntimeError("out of memory")
        return real_train_cells(specs)

    monkeypatch.setattr(vmap_engine, "train_cells", failing_for_data_seed_1)
    results = train_batch([cell(steps=2), cell(steps=2, data_seed=1)])
    assert [result.outcome for result in results] == [CONVERGED, FAILED]
    assert results[1].error == "RuntimeError: out of memory" and results[1].losses == []


def test_the_in_process_executor_hands_vmap_specs_to_the_engine():
    specs = [cell("adam", 1e-3, seed, steps=2) for seed in range(3)] + [
        replace(cell("sgd", 0.1, 0, steps=2), engine="sequential")]
    started = []
    results = list(InProcess().run(specs, started.append))
    assert sorted(started, key=specs.index) == specs
    by_spec = {result.spec: result for result in results}
    assert all(by_spec[spec].runtime.get("engine") == "vmap" for spec in specs[:3])
    assert "engine" not in by_spec[specs[3]].runtime


def test_a_pool_trains_vmap_cells_as_one_batch_per_worker_with_the_same_bits():
    """--engine vmap --jobs 2: two batches, dealt round robin, each on its own worker; every number equals the
    in-process batch's and the sequential engine's (a cell's result does not depend on its batch)."""
    specs = grid_specs("steps=5", "engine=vmap", "seed=0")
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
    assert len(batch_keys) == 2 and {by_spec[spec].runtime["batch_cells"] for spec in specs} == {"8", "7"}
    for spec, alone in zip(specs, train_batch(specs), strict=True):
        assert by_spec[spec].losses == alone.losses == train(replace(spec, engine="sequential")).losses
        assert same_weights(by_spec[spec].final_weights, alone.final_weights)
