"""The pickle module of tinytrain's LoggedModels: their `data/model.pth` holds the weights only, once.

A LoggedModel's `data/model.pth` is a plain state dict (`torch.save(net.state_dict())`), which
`torch.load(path, weights_only=True)` reads without unpickling any code: it is the one copy of a checkpoint's
weights, and what `reproduce` checks. `mlflow.pytorch.load_model` reads `data/pickle_module_info.txt`, imports
the module named there (this one) and hands it to `torch.load(path, pickle_module=...)`; torch unpickles through
its `Unpickler`, and this Unpickler turns the state dict into the LeNet it belongs to. So the model loads as
any pickled pytorch model does, with tinytrain installed (as before, when the LeNet itself was pickled).

Keep this module's name: every store written since it exists names it in its models.
"""

from __future__ import annotations

import pickle
from pickle import *  # noqa: F403 - torch uses a pickle module's whole interface (dump, load, Pickler, ...)
from typing import Any


class Unpickler(pickle.Unpickler):
    """pickle's Unpickler, whose result, a LeNet state dict, becomes the LeNet with those weights."""

    def load(self) -> Any:
        state = super().load()
        if not isinstance(state, dict):  # not one of our state dicts: as pickle would give it
            return state
        from tinytrain.model import LeNet

        net = LeNet()
        net.load_state_dict(state)
        return net
