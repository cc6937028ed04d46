"""Real images: scikit-learn's handwritten digits (1,797 8x8 images shipped with it, no download).

Each image is scaled from 0..16 to [0, 1] and upsampled to the LeNet's 1x32x32 by bilinear interpolation
(`F.interpolate(mode="bilinear", align_corners=False)`, float32, on the CPU: deterministic). A stratified
split decided by data_seed holds out 20 % (360 images) as the test set, for reporting. With `validation` above
0 a second stratified split (also decided by data_seed) holds that fraction of the remaining 1,437 images out
as a validation set, for choosing: the test set stays the same images, and validation = 0 (the default) is
the split runs had before validation existed, so their keys and numbers hold. A run draws its minibatches from a
generator seeded with the run's seed: a random order of the 1,437 training images per epoch, cut into
batches of batch_size (the remainder of an epoch is dropped, so every step sees batch_size images). The
same seed draws the same batches whatever the optimizer, and nothing here touches torch's global RNG.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tinytrain.model import INPUT_SHAPE
from tinytrain.problems import Batch
from tinytrain.spec import RunSpec

TEST_FRACTION = 0.2
PIXEL_MAX = 16.0  # load_digits' pixels are counts 0..16
BATCH_SEED_OFFSET = 0x5EED  # the batch generator's seed is the run's seed plus this, apart from the init's


@functools.lru_cache(maxsize=4)
def load(data_seed: int, validation: float = 0.0) -> tuple[Batch, Batch, Batch | None]:
    """(train, validation, test) images [N, 1, 32, 32] in [0, 1] and labels [N], split by data_seed (validation
    None when no image is held out for it)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images / PIXEL_MAX, dtype=torch.float32).unsqueeze(1)
    images = F.interpolate(images, size=INPUT_SHAPE[2:], mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_index, test_index = train_test_split(
        range(len(labels)), test_size=TEST_FRACTION, stratify=digits.target, random_state=data_seed
    )
    validation_index = None
    if validation:
        train_index, validation_index = train_test_split(
            train_index, test_size=validation, stratify=digits.target[train_index], random_state=data_seed
        )
    train_index, test_index = torch.tensor(train_index), torch.tensor(test_index)
    held_out = None
    if validation_index is not None:
        validation_index = torch.tensor(validation_index)
        held_out = (images[validation_index], labels[validation_index])
    return (images[train_index], labels[train_index]), held_out, (images[test_index], labels[test_index])


class Digits:
    has_test_set = True

    def __init__(self, data_seed: int, batch_size: int, validation: float = 0.0):
        (self.train_images, self.train_labels), self.validation, test = load(data_seed, validation)
        self.test_images, self.test_labels = test
        self.batch_size = batch_size

    def batches(self, seed: int) -> DigitBatches:
        return DigitBatches(self.train_images, self.train_labels, self.batch_size, seed + BATCH_SEED_OFFSET)

    def fixed_batch(self) -> Batch:
        return self.train_images[: self.batch_size], self.train_labels[: self.batch_size]

    def evaluate(self, net: torch.nn.Module, loss: Callable) -> dict[str, float]:
        """test_loss and test_accuracy, and val_loss and val_accuracy where images are held out for validation."""
        sets = [("test", (self.test_images, self.test_labels))]
        if self.validation is not None:
            sets.insert(0, ("val", self.validation))
        metrics = {}
        with torch.no_grad():
            for name, (images, labels) in sets:
                outputs = net(images)
                metrics[f"{name}_loss"] = loss(outputs, labels).item()
                metrics[f"{name}_accuracy"] = (outputs.argmax(dim=1) == labels).double().mean().item()
        return metrics


class DigitBatches:
    """A run's minibatches: a random order of the training images per epoch from a generator of its own, cut
    into batches. Its state (the generator's, the epoch's order, the position in it) is part of a run's
    training state, so that a continued run draws the batches a straight run would."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order: torch.Tensor | None = None  # None: a new epoch's order is drawn at the next batch
        self.start = 0

    def __iter__(self) -> DigitBatches:
        return self

    def __next__(self) -> Batch:
        count = len(self.labels)
        if self.order is None or self.start + self.batch_size > count:
            self.order, self.start = torch.randperm(count, generator=self.generator), 0
        index = self.order[self.start : self.start + self.batch_size]
        self.start += self.batch_size
        return self.images[index], self.labels[index]

    def state_dict(self) -> dict[str, object]:
        return {
            "generator": self.generator.get_state(),
            "order": torch.empty(0, dtype=torch.long) if self.order is None else self.order.clone(),
            "start": self.start,
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"] if len(state["order"]) else None
        self.start = int(state["start"])


def make(spec: RunSpec) -> Digits:
    return Digits(spec.data_seed, spec.batch_size, spec.validation)
