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
from collections.abc import Callable, Iterator

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

    def batches(self, seed: int) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(seed + BATCH_SEED_OFFSET)
        count = len(self.train_labels)
        while True:
            order = torch.randperm(count, generator=generator)
            for start in range(0, count - self.batch_size + 1, self.batch_size):
                index = order[start : start + self.batch_size]
                yield self.train_images[index], self.train_labels[index]

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


def make(spec: RunSpec) -> Digits:
    return Digits(spec.data_seed, spec.batch_size, spec.validation)
