"""tinytrain: see, measure and compare how optimizers train the tutorial LeNet, logged to MLflow.

`import tinytrain` gives the Python API (tinytrain/api.py): `tinytrain.open_store()`, `tinytrain.load_experiment()`,
`tinytrain.run_sweep()`, ... It is loaded on first use, so that importing a part of the package (a worker process
imports the engines) does not load the API, and `import tinytrain` loads neither torch, MLflow nor pandas.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # `from tinytrain import plugins`: the module
        return importlib.import_module(f"{__name__}.{name}")
    api = importlib.import_module("tinytrain.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'tinytrain' has no attribute {name!r}")


def __dir__() -> list[str]:
    api = importlib.import_module("tinytrain.api")
    return sorted([*globals(), *api.__all__])
