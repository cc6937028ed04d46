"""Blobs: a synthetic 10-class image classification problem at the LeNet's input shape (1x32x32).

Each class has a prototype image drawn from a generator seeded with data_seed; an example is its class's
prototype plus Gaussian noise of standard deviation `noise`. A training set and a test set of fixed sizes
are drawn once per problem; a run's minibatches are a random order of the training set per epoch, drawn
from a generator seeded with the run's seed. `net = "mlp"` trains a small MLP of the problem's own instead
of the LeNet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

CLASSES = 10
SHAPE = (1, 32, 32)


class Blobs:
    has_test_set = True

    def __init__(
        self,
        data_seed: int = 0,
        batch_size: int = 64,
        noise: float = 1.0,
        train_size: int = 512,
        test_size: int = 256,
        net: str = "lenet",
    ):
        if net not in ("lenet", "mlp"):
            raise ValueError(f"net must be lenet or mlp, got {net!r}")
        generator = torch.Generator().manual_seed(data_seed)
        prototypes = torch.randn(CLASSES, *SHAPE, generator=generator)

        def draw(count: int) -> tuple[torch.Tensor, torch.Tensor]:
            labels = torch.randint(CLASSES, (count,), generator=generator)
            return prototypes[labels] + noise * torch.randn(count, *SHAPE, generator=generator), labels

        self.train_images, self.train_labels = draw(train_size)
        self.test_images, self.test_labels = draw(test_size)
        self.batch_size = min(batch_size, train_size)
        self.net = net

    def batches(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(seed)
        count = len(self.train_labels)
        while True:
            order = torch.randperm(count, generator=generator)
            for start in range(0, count - self.batch_size + 1, self.batch_size):
                index = order[start : start + self.batch_size]
                yield self.train_images[index], self.train_labels[index]

    def fixed_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_images[: self.batch_size], self.train_labels[: self.batch_size]

    def evaluate(self, net: nn.Module, loss: Callable) -> dict[str, float]:
        with torch.no_grad():
            outputs = net(self.test_images)
            return {
                "test_loss": loss(outputs, self.test_labels).item(),
                "test_accuracy": (outputs.argmax(dim=1) == self.test_labels).double().mean().item(),
            }

    def model(self) -> nn.Module:
        if self.net == "mlp":
            return nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 64), nn.ReLU(), nn.Linear(64, CLASSES))
        from tinytrain.model import LeNet

        return LeNet()
