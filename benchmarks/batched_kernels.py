"""The vmap engine's model-step, split into forward+backward and updates, against a sequential step.

The engine's batched net (tinytrain/engines/batched_net.py) computes the LeNet's forward and backward for stacked cells
with torch's own kernels (conv as im2col + batched GEMM, backward as batched GEMMs + col2im, the linear
layers' weight gradients as exact products). This script first checks that every loss and every gradient
of the default grid's cells equals autograd's on one cell at a time, bit for bit, then times, alternately in
one process: one sequential step (forward, backward and torch.optim's update, the mean over the grid's
optimizers), the engine's forward+backward over all cells at once and as the sweep's sub-batches, and the
engine's stacked updates over the sub-batches. Model-step = one cell's step.

Usage: python benchmarks/batched_kernels.py [--cells 45] [--repeat 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from tinytrain.engines.batched import rows_by_update_rule, rule_slices
from tinytrain.engines.batched_net import BatchedNet, cell_parameters, initial_weights
from tinytrain.engines.batched_updates import UPDATE_RULES
from tinytrain.engines.planner import sub_batches
from tinytrain.engines.sequential import configure_runtime, initial_net
from tinytrain.optimizers import build_optimizer
from tinytrain.problems.one_sample import loss_fn, make_input, make_target
from tinytrain.spec import RunSpec, default_experiment_path, load_experiment


def check_against_autograd(specs: list[RunSpec]) -> None:
    """Every cell's loss and gradient from the batched net equal autograd's on that cell alone."""
    net = BatchedNet(specs[0].data_seed, specs[0].target_index)
    gradients, losses = net.losses_and_gradients(initial_weights(specs))
    for row, spec in enumerate(specs):
        single = initial_net(spec)
        loss = loss_fn(single(net.input), net.target)
        loss.backward()
        same = loss.item() == losses[row].item() and all(
            torch.equal(parameter.grad, got)
            for parameter, got in zip(single.parameters(), cell_parameters(gradients[row]).values(), strict=True)
        )
        if not same:
            sys.exit(f"cell {row} ({spec.run_name}): the batched kernels do not give autograd's bits")
    print(f"{len(specs)} cells: every loss and gradient equals autograd's on one cell, bit for bit")


def sequential_steps(specs: list[RunSpec]) -> Callable[[], None]:
    """One torch.optim step of a cell of each optimizer of the grid, one after another."""
    x, target = make_input(specs[0].data_seed), make_target(specs[0].target_index)
    steps = []
    for spec in specs[:: max(1, len(specs) // 5)]:
        net = initial_net(spec)
        optimizer = build_optimizer(spec.kind, net.parameters(), spec.lr, spec.optimizer_kwargs)

        def step(net=net, optimizer=optimizer) -> None:
            optimizer.zero_grad()
            loss = loss_fn(net(x), target)
            loss.item()
            loss.backward()
            optimizer.step()

        steps.append(step)

    def each_optimizer() -> None:
        for step in steps:
            step()

    return each_optimizer


def engine_parts(batches: list[list[RunSpec]]) -> tuple[Callable[[], None], Callable[[], None]]:
    """(forward+backward, updates) of the engine over batches of cells, each as vmap.train_cells runs it."""
    parts = []
    for specs in batches:
        cells = [specs[index] for index in rows_by_update_rule(specs)]
        weights, net = initial_weights(cells), BatchedNet(cells[0].data_seed, cells[0].target_index)
        gradients = net.losses_and_gradients(weights)[0].clone()
        updates = [(rows, UPDATE_RULES[rule](cells[rows])) for rule, rows in rule_slices(cells)]
        parts.append((net, weights, gradients, updates))

    def forward_backward() -> None:
        for net, weights, _, _ in parts:
            net.losses_and_gradients(weights)[1].tolist()

    def update() -> None:
        with torch.no_grad():
            for _, weights, gradients, updates in parts:
                for rows, stacked in updates:
                    stacked.step(weights[rows], gradients[rows])

    return forward_backward, update


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=45)
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    configure_runtime(1, False)
    specs = (load_experiment(default_experiment_path(), ["engine=vmap"]).specs() * 10)[: args.cells]
    check_against_autograd(specs)
    whole, _ = engine_parts([specs])
    forward_backward, update = engine_parts(sub_batches(specs))
    variants = {
        "sequential step (forward, backward, update), mean over the optimizers": (sequential_steps(specs), 5),
        f"engine forward+backward, one batch of {len(specs)}": (whole, len(specs)),
        "engine forward+backward, the sweep's sub-batches": (forward_backward, len(specs)),
        "engine updates, the sweep's sub-batches": (update, len(specs)),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):  # alternated, on a shared machine
        for name, (step, cells) in variants.items():
            step()
            samples = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                step()
                samples.append(time.perf_counter() - started)
            times[name].append(statistics.median(samples) / cells)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name}: {value * 1e6:.0f} us a model-step (fastest round {min(times[name]) * 1e6:.0f})")
    sequential, *_, fb, up = medians.values()
    print(
        f"engine model-step {(fb + up) * 1e6:.0f} us: {sequential / (fb + up):.1f}x the sequential step; "
        f"forward+backward alone bounds it at {sequential / fb:.1f}x (medians of {args.rounds} alternated rounds)"
    )


if __name__ == "__main__":
    main()
