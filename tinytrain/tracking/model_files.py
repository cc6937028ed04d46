"""A checkpoint's model files: the bytes of its weights, and the Unpickler that MLflow loads them back through.

A LoggedModel's `data/model.pth` is `torch.save` of a plain state dict: its one copy of a checkpoint's weights,
which `torch.load(path, weights_only=True)` reads without unpickling any code, and what `reproduce` checks.

Saving: the sweep's process has torch imported to train; its writer process would import torch (on the path
every sweep waits for) only to call torch.save. So the sweep's side saves each checkpoint into bytes
(SavedWeights, what travels to the writer) and the writer writes those bytes as they are: it never imports
torch once the model template is cached (store.ModelFiles). A state dict handed to the store directly (a
Recorder in the training process) is saved the same way, into the same bytes.

Loading with MLflow: `mlflow.pytorch.load_model` reads `data/pickle_module_info.txt`, imports the module
named there and hands it to `torch.load(path, pickle_module=...)`. That module is weights_pickle.py, whose
name every store written since it exists keeps in its models: it is pickle's interface with this module's
LeNetUnpickler, which turns the state dict into the LeNet it belongs to. So the model loads as any pickled
pytorch model does, with tinytrain installed.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SavedWeights:
    """The bytes of `torch.save(state_dict)`: a weights-only file that torch.load(weights_only=True) reads."""

    data: bytes


def save_weights(state_dict: Mapping[str, Any]) -> SavedWeights:
    """A state dict (tensors, or arrays) saved into bytes; each tensor is copied into a storage of its own,
    so that a view never drags its whole buffer into the file."""
    import torch

    buffer = io.BytesIO()
    torch.save({name: torch.as_tensor(tensor).detach().clone() for name, tensor in state_dict.items()}, buffer)
    return SavedWeights(buffer.getvalue())


def weights_file_bytes(weights: SavedWeights | Mapping[str, Any]) -> bytes:
    """The bytes of a checkpoint's file, whether it comes saved already or as a state dict."""
    return weights.data if isinstance(weights, SavedWeights) else save_weights(weights).data


class LeNetUnpickler(pickle.Unpickler):
    """pickle's Unpickler, whose result, a LeNet state dict, becomes the LeNet with those weights."""

    def load(self) -> Any:
        state = super().load()
        if not isinstance(state, dict):  # not one of our state dicts: as pickle would give it
            return state
        from tinytrain.model import LeNet

        net = LeNet()
        net.load_state_dict(state)
        return net
