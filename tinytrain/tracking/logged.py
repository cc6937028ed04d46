"""What `reproduce` reads of a logged run: its params, tags, every metric's history and every weight it keeps.

Weights come back without unpickling any code from the store: the state dicts (checkpoints/*.pt) and the
LoggedModels' pickled nets (data/model.pth) are read with torch.load(weights_only=True), which builds only
tensors, plain containers and, for a model, the few classes of the net that the running tinytrain allows
(its own LeNet and torch's layers), never a callable the file names.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinytrain.spec import RunSpec
from tinytrain.tracking.artifacts import local_artifact_path
from tinytrain.tracking.contract import CHECKPOINTS, FINAL_CHECKPOINT, KIND, LOSS, OUTCOME, RUN_KEY, TrackingError
from tinytrain.tracking.store import Store

MODEL_WEIGHTS = "data/model.pth"  # where mlflow.pytorch keeps the pickled net of a model


@dataclass
class LoggedRun:
    """A run's record in plain values: what it claims, for `reproduce` to check against a retraining."""

    run_id: str
    spec: RunSpec  # from the params alone
    tags: dict[str, str]
    metrics: dict[str, list[tuple[int, float]]]  # every logged metric: [(step, value)] in step order
    checkpoints: dict[int, dict] = field(default_factory=dict)  # step -> state dict of checkpoints/*.pt
    models: dict[int, dict] = field(default_factory=dict)  # step -> weights of the run's LoggedModel there
    # ("checkpoint" or "model", step) -> why its weights could not be read (deleted, damaged, not a net)
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
            raise TrackingError(f"run {run_id} is not a tinytrain run of a grid cell (a sweep's parent?): give "
                                "the id of one of its nested runs")
        try:
            spec = RunSpec.from_params(run.data.params)
        except (KeyError, ValueError) as error:
            raise TrackingError(f"run {run_id} lacks the params to rebuild it ({error}): was it logged by "
                                "tinytrain?") from None
        metrics = {name: [(metric.step, metric.value) for metric in sorted(
                       store.client.get_metric_history(run_id, name), key=lambda metric: metric.step)]
                   for name in sorted(run.data.metrics)}
        record = LoggedRun(run_id, spec, tags, metrics)
        _read_checkpoints(store, record)
        _read_models(store, run, record)
    return record


def _read_checkpoints(store: Store, record: LoggedRun) -> None:
    """step -> state dict of every checkpoint file the run keeps (final.pt is at the spec's last step)."""
    import torch

    final_name = Path(FINAL_CHECKPOINT).name
    names = [Path(item.path).name for item in store.client.list_artifacts(record.run_id, CHECKPOINTS)]
    if not names:
        return
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
                record.unreadable["checkpoint", step] = f"{CHECKPOINTS}/{name}: {_reason(error)}"


def _read_models(store: Store, run: Any, record: LoggedRun) -> None:
    """step -> weights of each LoggedModel the run links to its metrics at a step (run outputs)."""
    outputs = run.outputs.model_outputs if run.outputs else []
    with tempfile.TemporaryDirectory() as folder:
        for output in outputs:
            try:
                model = store.client.get_logged_model(output.model_id)
                if getattr(model.status, "name", str(model.status)) != "READY":
                    raise TrackingError(f"its status is {model.status}")
                path = _model_file(model.artifact_location, Path(folder) / output.model_id)
                record.models[output.step] = load_model_weights(path)
            except Exception as error:  # noqa: BLE001 - deleted, unreadable, not a net: all are findings
                record.unreadable["model", output.step] = f"LoggedModel {output.model_id}: {_reason(error)}"


def _model_file(artifact_location: str, folder: Path) -> Path:
    local = local_artifact_path(artifact_location)
    if local is not None:
        if not (local / MODEL_WEIGHTS).is_file():
            raise TrackingError(f"it has no {MODEL_WEIGHTS}")
        return local / MODEL_WEIGHTS
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{artifact_location}/{MODEL_WEIGHTS}",
                                                    dst_path=str(folder)))


def load_model_weights(path: Path) -> dict:
    """The state dict of a net pickled by mlflow.pytorch, loaded weights-only.

    torch's weights-only unpickler builds nothing but tensors and containers, and instances of the
    classes allowed here, whose state it sets with torch's own Module.__setstate__: no code of the file
    runs. A model of another net (any other class) is refused.
    """
    import torch

    from tinytrain.model import LeNet

    allowed = [LeNet, torch.nn.Conv2d, torch.nn.Linear]  # the classes a pickled LeNet names
    with torch.serialization.safe_globals(allowed):
        net = torch.load(path, weights_only=True)
    if not isinstance(net, LeNet):
        raise TrackingError(f"{MODEL_WEIGHTS} holds a {type(net).__name__}, not the LeNet")
    return {name: tensor.detach() for name, tensor in net.state_dict().items()}


def _reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
