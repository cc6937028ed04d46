"""The names of tinytrain's data contract with MLflow: what every reader and writer of the store agrees on.

One parent run per sweep, one nested child run per grid cell with the cell's params, its `loss` at every
step, `initial_loss`, `final_loss`, tags (run key, outcome, environment) and its final weights as an MLflow
model at the final step (docs/data-contract.md).
"""

from __future__ import annotations

from pathlib import Path

from tinytrain.results import DIVERGED, FINISHED, LEGACY_FINISHED, STOPPED

# Tag names
RUN_KEY = "tinytrain.run_key"
OUTCOME = "tinytrain.outcome"
KIND = "tinytrain.kind"  # "sweep" on parent runs, "run" on the runs of grid cells, CELL_SUMMARY below
CELL_SUMMARY = "cell"  # KIND of a sweep's summary of one (optimizer, lr) cell over its seeds (no run key)
OWNER = "tinytrain.owner"  # host:pid:start of the process that writes the run, to find runs left RUNNING
ERROR = "tinytrain.error"
# On a RUNNING cell run: the time (Unix seconds) until which the sweep that created it holds the cell. Sweeps
# sharing a grid skip a cell held by another, and take over a claim whose lease lapsed (store.claim_cell).
LEASE = "tinytrain.lease_until"
PARENT = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"  # a diverged run's name says so: "adam-lr0.1-seed0 (diverged)"
CONFIRMS = "tinytrain.confirms"  # on a confirmation sweep's parent run: the parent run id of the tuning sweep

# the outcomes of a cell that needs no new run; converged: a finished run of an older store (legacy.py);
# stopped: a run the budget stopped early (successive halving), with the rung it reached
FINISHED_OUTCOMES = (FINISHED, DIVERGED, LEGACY_FINISHED, STOPPED)
EXPERIMENT_FILE = "experiment.toml"  # the resolved experiment file, an artifact of the sweep's parent run
# A checkpoint is a LoggedModel whose data/model.pth is a weights-only state dict (model_files.py).
MLMODEL = "MLmodel"
MODEL_DATA = Path("data") / "model.pth"
LOSS = "loss"
# A run that saves training states (checkpoint_every, or a budget) keeps the one where it ended beside its
# checkpoint: a weights-only file of tensors and plain containers (engines/state.py) that a run continues from.
# Not in checkpoints/, whose *.pt files older stores' readers take for state dicts of the net.
TRAINING_STATE = "training_state.pt"
# What a run keeps of its weights: its `record` param (spec.settings.RECORDS; a run without it kept a model)
RECORD = "record"
RECORD_MODEL, RECORD_WEIGHTS, RECORD_NONE = "model", "weights", "none"
# record = weights: each checkpoint's weights as a plain artifact of the run, a weights-only state dict
WEIGHTS_FOLDER = "weights"
# record = weights: the LoggedModel of a cell's median seed carries this tag, whose value is the cell's key
CELL_MODEL = "tinytrain.cell_model"
MEDIAN_OF = "tinytrain.median_of"  # and this one, what the median was taken over: "10 seeds by final_loss"


def weights_artifact(step: int) -> str:
    """The artifact of a checkpoint's weights under record = weights: weights/step-000100.pth."""
    return f"{WEIGHTS_FOLDER}/step-{step:06d}.pth"


def weights_artifact_step(name: str) -> int | None:
    """The step of a weights artifact's file name (step-000100.pth), None for any other name."""
    digits = name.removeprefix("step-").removesuffix(".pth")
    return int(digits) if name.startswith("step-") and name.endswith(".pth") and digits.isdigit() else None


class TrackingError(RuntimeError):
    """The store cannot be reached or does not hold what was asked for."""
