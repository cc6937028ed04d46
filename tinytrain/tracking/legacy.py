"""What tinytrain reads of stores written by its earlier versions, in one place.

Stores written before keep resuming, comparing and reproducing (tests/cli/test_legacy.py and others prove it).
What they hold that today's tinytrain no longer writes:

- the outcome `converged` for a finished run (before diverge_above existed): it counts as finished
  (contract.FINISHED_OUTCOMES; results.current_outcome gives today's name);
- a sweep's experiment.toml without `diverge_above` (same time): its runs were trained with no bound, so the
  file is read with diverge_above = None (recorded_experiment), which also keeps their run keys;
- each checkpoint's state dict in the run's own checkpoints/ folder (final.pt, step-NNNNNN.pt), beside its
  LoggedModel (before checkpoints were stored once): read_checkpoint_files reads them for reproduce;
- LoggedModels whose data/model.pth pickled the whole LeNet rather than its state dict: pickled_net_weights
  reads them weights-only, with only the LeNet's own classes allowed.

Run keys themselves need nothing here: settings added later enter a key only away from their defaults
(spec/settings.py, LATER_SETTINGS).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinytrain.spec import Experiment, load_experiment

if TYPE_CHECKING:
    from tinytrain.tracking.store import Store

CHECKPOINTS = "checkpoints"  # the run's folder of checkpoint files
FINAL_CHECKPOINT = f"{CHECKPOINTS}/final.pt"


def recorded_experiment(text: str, source: str, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """The experiment a sweep's parent run keeps (its to_toml), as written by any version: a file without
    diverge_above predates the bound, and its runs were trained without one."""
    return load_experiment(source, overrides, text=text, recorded=True)


def read_checkpoint_files(store: Store, record: Any, reason: Callable[[BaseException], str]) -> None:
    """step -> state dict of every checkpoint file the run keeps (final.pt is at the spec's last step), into
    record.checkpoints (record: a logged.LoggedRun); a file that cannot be read goes to record.unreadable with
    reason(error)."""
    import torch

    final_name = Path(FINAL_CHECKPOINT).name
    names = [Path(item.path).name for item in store.client.list_artifacts(record.run_id, CHECKPOINTS)]
    if not names:
        return
    record.legacy = True
    with tempfile.TemporaryDirectory() as folder:
        local = Path(store.client.download_artifacts(record.run_id, CHECKPOINTS, folder))
        for name in names:
            try:
                step = record.spec.steps if name == final_name else int(name.removeprefix("step-").removesuffix(".pt"))
            except ValueError:
                continue  # not a file of tinytrain's naming: nothing a reader of the run relies on
            try:
                record.checkpoints[step] = torch.load(local / name, weights_only=True)
            except Exception as error:  # noqa: BLE001 - a damaged file is a finding, not a crash
                record.unreadable["checkpoint", step] = f"{CHECKPOINTS}/{name}: {reason(error)}"


def pickled_net_classes() -> list[type]:
    """The classes a pickled LeNet names: torch's weights-only unpickler may build these and nothing else."""
    import torch

    from tinytrain.model import LeNet

    return [LeNet, torch.nn.Conv2d, torch.nn.Linear]


def pickled_net_weights(loaded: Any) -> dict | None:
    """The state dict of a LeNet that an older LoggedModel pickled whole (None if `loaded` is not one)."""
    from tinytrain.model import LeNet

    if not isinstance(loaded, LeNet):
        return None
    return {name: tensor.detach() for name, tensor in loaded.state_dict().items()}
