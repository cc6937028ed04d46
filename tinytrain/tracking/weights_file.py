"""A checkpoint's weights as the bytes of their file, made where torch already is.

A LoggedModel's `data/model.pth` is `torch.save` of a plain state dict. The sweep's process has torch
imported to train; its writer process would import torch (about a second of CPU, on the path every sweep
waits for) only to call torch.save. So the sweep's side saves each checkpoint into bytes (SavedWeights,
what travels to the writer) and the writer writes those bytes as they are: it never imports torch once
the model template is cached (store.ModelFiles). A state dict handed to the store directly (a Recorder in
the training process) is saved the same way, into the same bytes.
"""

from __future__ import annotations

import io
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
