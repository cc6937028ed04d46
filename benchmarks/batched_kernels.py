"""How fast can a batched engine be while it keeps the sequential engine's bits? A bound for the vmap target.

The vmap engine must give every cell's loss within 1e-5 relative of the sequential engine's, and 8 of the
default grid's 45 cells are chaotic: the sequential engine itself leaves that tolerance when it runs with two
threads instead of one. So a batched engine has to keep torch's own kernels per cell (MKL's GEMMs on the same
shapes, the same im2col and col2im, the same reductions). This script writes the LeNet's forward and backward by
hand for K stacked cells with such kernels (conv as im2col + batched GEMM, backward as batched GEMMs + col2im,
the linear layers' weight gradients as exact products), checks that every loss and every gradient equals
autograd's on one cell at a time bit for bit, and times it against one sequential step (forward, backward and
torch.optim's update) measured in the same process.

Usage: python benchmarks/batched_kernels.py [--cells 45] [--repeat 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from tinytrain.model import LeNet
from tinytrain.optimizers import build_optimizer
from tinytrain.problem import loss_fn, make_input, make_target
from tinytrain.spec import default_experiment_path, load_experiment
from tinytrain.train import configure_runtime, initial_net
from tinytrain.vmap import cell_parameters, initial_weights

aten = torch.ops.aten


def forward_backward(weights: torch.Tensor, gradients: torch.Tensor, x: torch.Tensor,
                     target: torch.Tensor) -> torch.Tensor:
    """The [K] losses of stacked weights; each cell's gradient written into its row of `gradients`."""
    cells = weights.shape[0]
    p, grad = cell_parameters(weights), cell_parameters(gradients)
    columns1 = F.unfold(x, 5)[0].expand(cells, 25, 784)
    h1 = torch.baddbmm(p["conv1.bias"].unsqueeze(2), p["conv1.weight"].view(cells, 6, 25), columns1)
    a1 = torch.relu(h1.view(cells, 6, 28, 28))
    p1, i1 = F.max_pool2d_with_indices(a1, 2)
    columns2 = F.unfold(p1, 5)
    h2 = torch.baddbmm(p["conv2.bias"].unsqueeze(2), p["conv2.weight"].view(cells, 16, 150), columns2)
    a2 = torch.relu(h2.view(cells, 16, 10, 10))
    p2, i2 = F.max_pool2d_with_indices(a2, 2)
    f = p2.view(cells, 1, 400)
    a3 = torch.relu(torch.baddbmm(p["fc1.bias"].unsqueeze(1), f, p["fc1.weight"].transpose(1, 2)))
    a4 = torch.relu(torch.baddbmm(p["fc2.bias"].unsqueeze(1), a3, p["fc2.weight"].transpose(1, 2)))
    z5 = torch.baddbmm(p["fc3.bias"].unsqueeze(1), a4, p["fc3.weight"].transpose(1, 2))
    difference = z5 - target
    losses = difference.pow(2).mean(dim=(1, 2))

    g = difference.mul(2.0 / 10)  # mse_loss_backward of the mean over 10 outputs
    for layer, below in (("fc3", a4), ("fc2", a3), ("fc1", f)):
        torch.mul(g.transpose(1, 2), below, out=grad[f"{layer}.weight"])  # an outer product: exact products
        grad[f"{layer}.bias"].copy_(g.squeeze(1))
        g = torch.bmm(g, p[f"{layer}.weight"])
        if layer != "fc1":
            g = aten.threshold_backward(g, below, 0)
    g = aten.max_pool2d_with_indices_backward(g.view(cells, 16, 5, 5), a2, [2, 2], [2, 2], [0, 0], [1, 1], False, i2)
    g = aten.threshold_backward(g, a2, 0).view(cells, 16, 100)
    torch.bmm(g, columns2.transpose(1, 2), out=grad["conv2.weight"].view(cells, 16, 150))
    torch.sum(g, 2, out=grad["conv2.bias"])
    g = F.fold(torch.bmm(p["conv2.weight"].view(cells, 16, 150).transpose(1, 2), g), (14, 14), 5)
    g = aten.max_pool2d_with_indices_backward(g, a1, [2, 2], [2, 2], [0, 0], [1, 1], False, i1)
    g = aten.threshold_backward(g, a1, 0).view(cells, 6, 784)
    torch.bmm(g, columns1.transpose(1, 2), out=grad["conv1.weight"].view(cells, 6, 25))
    torch.sum(g, 2, out=grad["conv1.bias"])
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=45)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    configure_runtime(1, False)
    specs = (load_experiment(default_experiment_path(), []).specs() * 10)[:args.cells]
    x, target = make_input(specs[0].data_seed), make_target(specs[0].target_index)
    weights = initial_weights(specs)
    gradients = torch.zeros_like(weights)

    losses = forward_backward(weights, gradients, x, target)
    for row, spec in enumerate(specs):
        net = initial_net(spec)
        loss = loss_fn(net(x), target)
        loss.backward()
        same = loss.item() == losses[row].item() and all(
            torch.equal(parameter.grad, got)
            for parameter, got in zip(net.parameters(), cell_parameters(gradients[row]).values(), strict=True))
        if not same:
            sys.exit(f"cell {row} ({spec.run_name}): the batched kernels do not give autograd's bits")
    print(f"{len(specs)} cells: every loss and gradient equals autograd's on one cell, bit for bit")

    def timed(step, repeat: int) -> float:
        step()
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    steps = []
    for spec in specs[:: max(1, len(specs) // 5)]:  # a cell of each optimizer
        net = LeNet()
        optimizer = build_optimizer(spec.kind, net.parameters(), spec.lr, spec.optimizer_kwargs)

        def step(net=net, optimizer=optimizer) -> None:
            optimizer.zero_grad()
            loss = loss_fn(net(x), target)
            loss.item()
            loss.backward()
            optimizer.step()

        steps.append(step)
    batched_times, step_times = [], []
    for _ in range(5):  # alternated, on a shared machine
        batched_times.append(timed(lambda: forward_backward(weights, gradients, x, target), args.repeat) / len(specs))
        step_times.append(statistics.mean(timed(step, args.repeat) for step in steps))
    batched, step_time = statistics.median(batched_times), statistics.median(step_times)
    print(f"batched forward+backward with torch's bits: {batched * 1e6:.0f} us a model-step ({len(specs)} cells)")
    print(f"sequential step (forward, backward, update), mean over the optimizers: {step_time * 1e6:.0f} us "
          "(medians of 5 alternated rounds)")
    print(f"bound on the speed-up of any engine with these kernels, before its updates: {step_time / batched:.1f}x")


if __name__ == "__main__":
    main()
