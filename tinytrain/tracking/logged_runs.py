"""What `reproduce` reads of a logged run: its params, tags, every metric's history and every weight it keeps.

A checkpoint is a LoggedModel of the run at its step, whose data/model.pth is a plain state dict (its only
copy of the weights). Older stores' checkpoint files and pickled nets are read through legacy.py (`legacy`).
Weights come back without unpickling any code from the store: everything is read with
torch.load(weights_only=True), which builds only tensors, plain containers and, for an old model, the few
classes of the net that the running tinytrain allows (its own LeNet and torch's layers), never a callable the
file names.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinytrain.spec import RunSpec
from tinytrain.tracking import legacy
from tinytrain.tracking.artifacts import local_artifact_file
from tinytrain.tracking.contract import (
    KIND,
    LOSS,
    MODEL_DATA,
    OUTCOME,
    RUN_KEY,
    WEIGHTS_FOLDER,
    TrackingError,
    weights_artifact_step,
)
from tinytrain.tracking.location import is_http
from tinytrain.tracking.store import Store

MODEL_WEIGHTS = MODEL_DATA.as_posix()  # a LoggedModel's weights: a state dict (a pickled net in older stores)


@dataclass
class LoggedRun:
    """A run's record in plain values: what it claims, for `reproduce` to check against a retraining."""

    run_id: str
    spec: RunSpec  # from the params alone
    tags: dict[str, str]
    metrics: dict[str, list[tuple[int, float]]]  # every logged metric: [(step, value)] in step order
    checkpoints: dict[int, dict] = field(default_factory=dict)  # step -> state dict of checkpoints/*.pt (legacy)
    models: dict[int, dict] = field(default_factory=dict)  # step -> weights of the run's LoggedModel there
    weights: dict[int, dict] = field(default_factory=dict)  # step -> weights/step-NNNNNN.pth (record = weights)
    # written before checkpoints were stored once: the run also keeps checkpoints/*.pt, each checked too
    legacy: bool = False
    # ("checkpoint", "model" or "weights", step) -> why its weights could not be read (deleted, damaged, ...)
    unreadable: dict[tuple[str, int], str] = field(default_factory=dict)

    @property
    def outcome(self) -> str | None:
        return self.tags.get(OUTCOME)

    @property
    def logged_key(self) -> str | None:
        return self.tags.get(RUN_KEY)

    @property
    def losses(self) -> list[float]:
        return [value for _step, value in self.metrics.get(LOSS, [])]


def read_logged_run(uri: str, run_id: str) -> LoggedRun:
    """Read a run's record back: params -> spec, every metric's history, every checkpoint and model."""
    with Store(uri) as store:
        run = store.get_run(run_id)
        tags = dict(run.data.tags)
        if tags.get(KIND) != "run":
            raise TrackingError(
                f"run {run_id} is not a tinytrain run of a grid cell (a sweep's parent?): give "
                "the id of one of its nested runs"
            )
        try:
            spec = RunSpec.from_params(run.data.params)
        except (KeyError, ValueError) as error:
            raise TrackingError(
                f"run {run_id} lacks the params to rebuild it ({error}): was it logged by tinytrain?"
            ) from None
        metrics = {
            name: [
                (metric.step, metric.value)
                for metric in sorted(store.client.get_metric_history(run_id, name), key=lambda metric: metric.step)
            ]
            for name in sorted(run.data.metrics)
        }
        record = LoggedRun(run_id, spec, tags, metrics)
        legacy.read_checkpoint_files(store, record, _reason)
        _read_weights_files(store, record)
        _read_models(store, run, record)
    return record


def _read_weights_files(store: Store, record: LoggedRun) -> None:
    """step -> state dict of each weights file the run keeps (record = weights), read weights-only: a plain
    state dict, never a pickled net."""
    names = [Path(item.path).name for item in store.client.list_artifacts(record.run_id, WEIGHTS_FOLDER)]
    steps = {name: weights_artifact_step(name) for name in names}
    if not any(step is not None for step in steps.values()):
        return
    with tempfile.TemporaryDirectory() as folder:
        local = Path(store.client.download_artifacts(record.run_id, WEIGHTS_FOLDER, folder))
        for name, step in steps.items():
            if step is None:
                continue  # not a file of tinytrain's naming
            try:
                record.weights[step], _pickled = load_model_weights(local / name, pickled_nets=False)
            except Exception as error:  # noqa: BLE001 - a damaged file is a finding, not a crash
                record.unreadable["weights", step] = f"{WEIGHTS_FOLDER}/{name}: {_reason(error)}"


def _read_models(store: Store, run: Any, record: LoggedRun) -> None:
    """step -> weights of each LoggedModel the run links to its metrics at a step (run outputs)."""
    outputs = run.outputs.model_outputs if run.outputs else []
    with tempfile.TemporaryDirectory() as folder:
        for output in outputs:
            try:
                model = store.client.get_logged_model(output.model_id)
                if getattr(model.status, "name", str(model.status)) != "READY":
                    raise TrackingError(f"its status is {model.status}")
                path = _model_file(store.uri, model.artifact_location, Path(folder) / output.model_id)
                record.models[output.step], pickled_net = load_model_weights(path)
                record.legacy = record.legacy or pickled_net
            except Exception as error:  # noqa: BLE001 - deleted, unreadable, not a net: all are findings
                record.unreadable["model", output.step] = f"LoggedModel {output.model_id}: {_reason(error)}"


def _model_file(store_uri: str, artifact_location: str, folder: Path) -> Path:
    local = local_artifact_file(store_uri, artifact_location, MODEL_WEIGHTS)
    if local is not None:
        if not local.is_file():
            raise TrackingError(f"it has no {MODEL_WEIGHTS}")
        return local
    import mlflow

    server = store_uri if is_http(store_uri) else None  # mlflow-artifacts: URIs go through this server
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"{artifact_location}/{MODEL_WEIGHTS}", dst_path=str(folder), tracking_uri=server
        )
    )


def load_model_weights(path: Path, pickled_nets: bool = True) -> tuple[dict, bool]:
    """A LoggedModel's weights, loaded weights-only, and whether they were a pickled net (an older store).

    tinytrain's models keep a plain state dict (model_files.py). Older ones pickled the LeNet itself
    (legacy.py): torch's weights-only unpickler builds nothing but tensors and containers, and instances of the
    classes allowed there, whose state it sets with torch's own Module.__setstate__: no code of the file runs.
    Anything else (another net, a dict of other things) is refused.
    """
    import torch

    with torch.serialization.safe_globals(legacy.pickled_net_classes() if pickled_nets else []):
        loaded = torch.load(path, weights_only=True)
    pickled = legacy.pickled_net_weights(loaded) if pickled_nets else None
    if pickled is not None:
        return pickled, True
    if isinstance(loaded, dict) and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        return dict(loaded), False
    raise TrackingError(f"{path.parent.name}/{path.name} holds a {type(loaded).__name__}, not the LeNet's state dict")


def _reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
