"""The LeNet's forward and backward for stacked cells, written by hand with torch's own kernels.

The vmap engine keeps K cells' weights as rows of one [K, ROW_LENGTH] buffer and needs, each step, every
cell's loss and the gradient of its own loss. Autograd under torch.func.vmap gives them, but pays its
dispatch machinery on every operation; this module computes the same values with the kernels autograd
itself runs for one cell (conv as im2col and a GEMM, the conv backward as GEMMs and col2im, max-pool and
ReLU backward by their aten kernels, the linear layers' weight gradients as the outer products autograd
forms), batched over cells, and writes the gradients straight into a reused [K, ROW_LENGTH] buffer.

Why this gives the sequential engine's bits: torch's CPU bmm/baddbmm at these sizes run one GEMM per
matrix of the batch, on the same shapes as the single-cell convolution and linear layers, and each
parameter of a row starts 64 bytes aligned as a tensor of its own does (MKL's products depend on the
operands' alignment). The tests check every loss and weight against train.train bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinytrain.engines.sequential import initial_net
from tinytrain.model import LeNet
from tinytrain.problems.one_sample import make_input, make_target
from tinytrain.results import StateDict
from tinytrain.spec import RunSpec

aten = torch.ops.aten

# The LeNet's parameters in state-dict order, and where each lies in a cell's row of the stacked weights.
with torch.device("meta"):  # only the structure is needed (and no RNG is drawn)
    _SKELETON = LeNet()
PARAMETER_NAMES: tuple[str, ...] = tuple(name for name, _ in _SKELETON.named_parameters())
PARAMETER_SHAPES: tuple[torch.Size, ...] = tuple(p.shape for p in _SKELETON.parameters())
PARAMETER_SIZES: tuple[int, ...] = tuple(p.numel() for p in _SKELETON.parameters())
ALIGNMENT = 16  # float32 elements: 64 bytes, c10's alignment of every CPU tensor


def _aligned(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


# A row is [parameter, padding, parameter, padding, ...]; the padding stays zero (its gradient is zero).
ROW_PIECES: tuple[int, ...] = tuple(piece for size in PARAMETER_SIZES for piece in (size, _aligned(size) - size))
ROW_LENGTH = sum(ROW_PIECES)  # 61,760 floats for the 61,706 parameters


def initial_weights(cells: list[RunSpec]) -> torch.Tensor:
    """[cells, ROW_LENGTH]: each row a cell's LeNet as train.initial_net builds it (seeded right before)."""
    weights = torch.zeros(len(cells), ROW_LENGTH)
    for row, cell in enumerate(cells):
        parameters = dict(initial_net(cell).named_parameters())
        for name, piece in cell_parameters(weights[row]).items():
            piece.copy_(parameters[name].detach())
    return weights


def cell_parameters(weight_rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Weight rows ([..., ROW_LENGTH]) as the LeNet's named parameters ([..., *shape]): views, no copies."""
    pieces = weight_rows.split(ROW_PIECES, dim=-1)[::2]  # every other piece is padding
    return {
        name: piece.view(*weight_rows.shape[:-1], *shape)
        for name, piece, shape in zip(PARAMETER_NAMES, pieces, PARAMETER_SHAPES, strict=True)
    }


def cell_state_dict(weight_row: torch.Tensor) -> StateDict:
    """A copy of one cell's weights as a LeNet state dict (what train.snapshot gives)."""
    return {name: tensor.clone() for name, tensor in cell_parameters(weight_row.detach()).items()}


class BatchedNet:
    """The experiment's problem (input, target, MSE) for stacked weights: every cell's loss and gradient.

    The gradients land in a [K, ROW_LENGTH] buffer reused from step to step: use them before the next
    call. The input is the same for every cell, so its im2col columns are computed once.
    """

    def __init__(self, data_seed: int, target_index: int):
        self.input, self.target = make_input(data_seed), make_target(target_index)
        self.columns1 = F.unfold(self.input, 5)[0]  # [25, 784], shared by every cell
        self._gradients: torch.Tensor | None = None

    def _forward(self, p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """[K] losses, and what the backward needs: each layer's output and the pools' indices."""
        cells = p["conv1.weight"].shape[0]
        columns1 = self.columns1.expand(cells, 25, 784)
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
        difference = z5 - self.target
        losses = difference.pow(2).mean(dim=(1, 2))  # nn.MSELoss: the mean over the 10 outputs
        return losses, [columns1, a1, i1, columns2, a2, i2, f, a3, a4, difference]

    def losses(self, weights: torch.Tensor) -> torch.Tensor:
        """[K] losses of the stacked weights [K, ROW_LENGTH] (a forward only)."""
        return self._forward(cell_parameters(weights))[0]

    def losses_and_gradients(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([K, ROW_LENGTH] gradients, [K] losses) of the stacked weights: one forward and one backward."""
        cells = len(weights)
        if self._gradients is None or len(self._gradients) != cells:
            self._gradients = torch.zeros(cells, ROW_LENGTH)  # the padding is never written: it stays 0
        p, grad = cell_parameters(weights), cell_parameters(self._gradients)
        losses, (columns1, a1, i1, columns2, a2, i2, f, a3, a4, difference) = self._forward(p)
        g = difference.mul(2.0 / 10)  # mse_loss_backward of the mean over 10 outputs
        for layer, below in (("fc3", a4), ("fc2", a3), ("fc1", f)):
            torch.mul(g.transpose(1, 2), below, out=grad[f"{layer}.weight"])  # the outer product, exact
            grad[f"{layer}.bias"].copy_(g.squeeze(1))
            g = torch.bmm(g, p[f"{layer}.weight"])
            if layer != "fc1":
                g = aten.threshold_backward(g, below, 0)
        g = aten.max_pool2d_with_indices_backward(
            g.view(cells, 16, 5, 5), a2, [2, 2], [2, 2], [0, 0], [1, 1], False, i2
        )
        g = aten.threshold_backward(g, a2, 0).view(cells, 16, 100)
        torch.bmm(g, columns2.transpose(1, 2), out=grad["conv2.weight"].view(cells, 16, 150))
        torch.sum(g, 2, out=grad["conv2.bias"])
        g = F.fold(torch.bmm(p["conv2.weight"].view(cells, 16, 150).transpose(1, 2), g), (14, 14), 5)
        g = aten.max_pool2d_with_indices_backward(g, a1, [2, 2], [2, 2], [0, 0], [1, 1], False, i1)
        g = aten.threshold_backward(g, a1, 0).view(cells, 6, 784)
        torch.bmm(g, columns1.transpose(1, 2), out=grad["conv1.weight"].view(cells, 6, 25))
        torch.sum(g, 2, out=grad["conv1.bias"])
        return self._gradients, losses
