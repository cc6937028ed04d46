"""Every piece of a run's training state, saved and restored as one: what lets a run stop at step k and later
continue to step n with every logged number and the final weights bit-identical to a run trained straight to n.

A state is taken *before* step k: the weights after k updates, the optimizer's state, the data order (where
the run's batches are), torch's global RNG, and the history logged so far (losses[0..k-1] and the held-out
metrics measured before step k). Continuing redoes step k from there. It holds tensors and plain containers
only, so that `torch.load(weights_only=True)` reads it: no code is unpickled.

Files: `<folder>/<lineage>/step-NNNNNNNN.pt`, where the lineage is the run key without `steps` (runs that
differ only in how far they train share their states), written whole (a temporary file, then a rename), so
a process killed while saving leaves the previous state.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import torch

STATE_FORMAT = 1  # bump when the layout below changes; an older state is then not continued from
STATE_FILE = re.compile(r"step-(\d+)\.pt")


def training_state(
    step: int,
    net: torch.nn.Module,
    optimizer: Any,
    batches: Any,
    losses: list[float],
    metrics: dict[str, dict[int, float]],
    seconds: float,
    scheduler: Any = None,
) -> dict[str, Any]:
    """Everything that decides the rest of a run, before step `step`, as tensors and plain containers.

    The one place a new piece of state joins (a learning-rate scheduler's state_dict, when a recipe has one):
    add it here and in restore().
    """
    state: dict[str, Any] = {
        "format": STATE_FORMAT,
        "step": step,
        "weights": {name: tensor.detach().clone() for name, tensor in net.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "data": batches.state_dict() if hasattr(batches, "state_dict") else {},
        "losses": torch.tensor(losses, dtype=torch.float64),
        "metrics": {
            name: torch.tensor(sorted(series.items()), dtype=torch.float64).reshape(-1, 2)
            for name, series in metrics.items()
        },
        "seconds": seconds,
    }
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    return state


def restore(
    state: dict[str, Any], net: torch.nn.Module, optimizer: Any, batches: Any, scheduler: Any = None
) -> tuple[list[float], dict[str, dict[int, float]], float]:
    """Put a saved state back into a freshly built net, optimizer and batch stream (and scheduler);
    returns the history so far: (losses, metrics, seconds)."""
    net.load_state_dict(state["weights"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    if hasattr(batches, "load_state_dict"):
        batches.load_state_dict(state["data"])
    else:  # a stream without a state of its own: the same seed gives the same batches, so skip the first ones
        for _ in range(state["step"]):
            next(batches)
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    metrics = {name: {int(step): value for step, value in pairs.tolist()} for name, pairs in state["metrics"].items()}
    return state["losses"].tolist(), metrics, float(state["seconds"])


def state_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_state(data: bytes | Path) -> dict[str, Any]:
    """A saved state, read weights-only."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    return torch.load(source, weights_only=True)


def state_path(folder: str | Path, lineage: str, step: int) -> Path:
    return Path(folder) / lineage / f"step-{step:08d}.pt"


def write_state(folder: str | Path, lineage: str, step: int, data: bytes) -> Path:
    """Write a state's bytes whole: a temporary file beside it, then a rename."""
    path = state_path(folder, lineage, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
    return path


def saved_steps(folder: str | Path, lineage: str) -> list[int]:
    """The steps a lineage has states at, ascending."""
    directory = Path(folder) / lineage
    if not directory.is_dir():
        return []
    return sorted(int(match[1]) for name in os.listdir(directory) if (match := STATE_FILE.fullmatch(name)))


def latest_state(folder: str | Path, lineage: str, at_most: int) -> dict[str, Any] | None:
    """The latest readable state of a lineage at or before step `at_most`; None when there is none."""
    for step in reversed(saved_steps(folder, lineage)):
        if step > at_most:
            continue
        try:
            state = load_state(state_path(folder, lineage, step))
        except Exception:  # noqa: BLE001 - a damaged or foreign file: fall back to an earlier state
            continue
        if state.get("format") == STATE_FORMAT and state.get("step") == step:
            return state
    return None
