"""reproduce.reproduce on records made from real training results, without a store: fast, so make mutation uses it.

The records hold exactly what the store would give back for these results (every metric as logged, the
weights of every checkpoint and LoggedModel); each test changes one thing and checks the line that names it.
The command line and a real store are tested in test_reproduce.py.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys

import pytest
import torch

from tinytrain import reproduce
from tinytrain.engines.sequential import train
from tinytrain.spec import load_experiment
from tinytrain.tracking.logged_runs import LoggedRun

CONVERGING = ["optimizer=adam", "lr=0.01", "seed=0", "steps=6", "checkpoint_every=4"]
DIVERGING = ["optimizer=sgd", "lr=100", "seed=0", "steps=6", "checkpoint_every=2"]


def spec_of(overrides):
    (spec,) = load_experiment(overrides=overrides).specs()
    return spec


# Real results, trained once when the module is imported (so that make mutation's forked test processes
# share them): the retraining each record is checked against.
TRAINED = {name: train(spec_of(overrides)) for name, overrides in (("converged", CONVERGING), ("diverged", DIVERGING))}


@pytest.fixture
def trained():
    return TRAINED


def record_of(result, **changes) -> LoggedRun:
    """The record the store would give back for a result, with some of it changed."""
    weights = {**result.checkpoints, result.final_step: result.final_weights} if result.final_weights else {}
    record = LoggedRun(
        run_id="r1",
        spec=result.spec,
        tags={
            "tinytrain.run_key": result.spec.key,
            "tinytrain.outcome": result.outcome,
            "tinytrain.torch": torch.__version__,
        },
        metrics={
            name: [(step, reproduce.as_stored(value)) for step, value in history]
            for name, history in result.logged_metrics().items()
        },
        checkpoints=copy.deepcopy(weights),
        models=copy.deepcopy(weights),
    )
    for name, value in changes.items():
        setattr(record, name, value)
    return record


def check(record, result):
    return reproduce.reproduce(record, retrain=lambda spec: result)


def test_a_faithful_record_is_identical_and_says_what_was_compared(trained):
    result = trained["converged"]
    verdict = check(record_of(result), result)
    assert verdict.identical and verdict.notes == []
    assert (verdict.losses, verdict.values, verdict.weights, verdict.tensors) == (
        7,
        2,
        {"checkpoint": 2, "model": 2},
        40,
    )
    assert verdict.describe() == (
        "identical: run r1 retrained from its record gives all 7 logged losses, 2 other "
        "metric value(s), 2 checkpoint(s) and 2 LoggedModel(s) (40 tensors) bit for bit"
    )


def test_a_diverged_record_is_identical_without_weights(trained):
    result = trained["diverged"]
    verdict = check(record_of(result), result)
    assert verdict.identical
    assert verdict.describe() == (
        f"identical: run r1 retrained from its record gives all {len(result.losses)} logged "
        "losses, 2 other metric value(s) bit for bit; no checkpoint: its record says it "
        "diverged"
    )


def test_the_retraining_is_the_real_one_by_default(trained):
    result = trained["converged"]
    assert reproduce.reproduce(record_of(result)).identical


def test_a_changed_torch_version_is_a_note_not_a_difference(trained):
    result = trained["converged"]
    record = record_of(result)
    record.tags["tinytrain.torch"] = "1.0"
    verdict = check(record, result)
    assert verdict.identical and verdict.notes == [f"recorded torch 1.0, running {torch.__version__}"]
    del record.tags["tinytrain.torch"]
    assert check(record, result).notes == []


def test_a_changed_key_is_the_first_difference(trained):
    result = trained["converged"]
    record = record_of(result)
    record.tags["tinytrain.run_key"] = "k"
    verdict = check(record, result)
    assert verdict.describe() == (
        f"differs at params: they give run key {result.spec.key}, the run's tag says k: "
        "the params or the key were changed, or another version of tinytrain wrote them"
    )


def test_an_outcome_other_than_the_retrained_one(trained):
    result = trained["converged"]
    record = record_of(result)
    record.tags["tinytrain.outcome"] = "diverged"
    verdict = check(record, result)
    assert verdict.differences[0].line() == "differs at outcome: logged diverged, retrained finished"
    # a record that says diverged implies no weights: those it has are named as extra
    assert verdict.differences[1].line() == (
        "differs at checkpoint at step 4: in the record, but a diverged run of these settings keeps none there"
    )
    assert verdict.describe().endswith(f" (and {len(verdict.differences) - 1} more difference(s))")


def missing_weights(what: str, why: str, steps: tuple[int, ...] = (2, 4, 6)) -> list[str]:
    """The line of each weight that a record said finished lacks, step by step."""
    return [
        f"differs at {what} at step {step}: missing ({why}); the record says the run finished, so it keeps "
        "these weights"
        for step in steps
    ]


def test_a_diverged_record_said_converged_misses_its_weights(trained):
    """A store keeps each checkpoint as a LoggedModel: their absence is named, step by step."""
    result = trained["diverged"]
    record = record_of(result)
    record.tags["tinytrain.outcome"] = "converged"
    lines = [difference.line() for difference in check(record, result).differences]
    assert lines == [
        "differs at outcome: logged converged, retrained diverged",
        *missing_weights("LoggedModel", "the run has no LoggedModel at this step"),
    ]


def test_an_old_stores_record_said_converged_misses_its_checkpoint_files_too(trained):
    """Older stores also kept checkpoints/*.pt (legacy): each missing file is named as well."""
    result = trained["diverged"]
    record = record_of(result, legacy=True)
    record.tags["tinytrain.outcome"] = "converged"
    lines = [difference.line() for difference in check(record, result).differences]
    assert lines == [
        "differs at outcome: logged converged, retrained diverged",
        *missing_weights("checkpoint", "not in the run's artifacts"),
        *missing_weights("LoggedModel", "the run has no LoggedModel at this step"),
    ]


def test_a_missing_weight_says_why_when_the_reader_knew(trained):
    result = trained["converged"]
    record = record_of(result)
    del record.models[6], record.checkpoints[4]
    record.unreadable = {("model", 6): "LoggedModel m-1: deleted"}
    lines = [difference.line() for difference in check(record, result).differences]
    assert lines == [
        "differs at checkpoint at step 4: missing (not in the run's artifacts); the record says the run finished, "
        "so it keeps these weights",
        "differs at LoggedModel at step 6: missing (LoggedModel m-1: deleted); the record says the run finished, "
        "so it keeps these weights",
    ]


def test_the_first_differing_loss_names_its_step_and_both_values(trained):
    result = trained["converged"]
    record = record_of(result)
    step, value = record.metrics["loss"][3]
    record.metrics["loss"][3] = (step, value + 1e-3)
    verdict = check(record, result)
    assert verdict.describe() == (
        f"differs at metric loss at step 3: logged {value + 1e-3!r}, retrained {value!r} "
        f"(difference {abs(value + 1e-3 - value):.3g})"
    )
    assert verdict.losses == 7


@pytest.mark.parametrize("metric", ["initial_loss", "final_loss"])
def test_a_changed_summary_metric(trained, metric):
    result = trained["converged"]
    record = record_of(result)
    step, value = record.metrics[metric][0]
    record.metrics[metric] = [(step, 0.5)]
    assert check(record, result).describe() == (
        f"differs at metric {metric} at step {step}: logged 0.5, retrained "
        f"{value!r} (difference {abs(0.5 - value):.3g})"
    )


def test_a_value_logged_at_another_step(trained):
    result = trained["converged"]
    record = record_of(result)
    record.metrics["final_loss"] = [(0, 0.5), *record.metrics["final_loss"]]
    assert check(record, result).describe() == (
        f"differs at metric final_loss: logged 0.5 at step 0, where training logs step 6 ({result.final_loss!r})"
    )


def test_a_truncated_and_an_empty_history(trained):
    result = trained["converged"]
    record = record_of(result)
    record.metrics["loss"] = record.metrics["loss"][:4]
    verdict = check(record, result)
    assert verdict.describe() == (
        "differs at metric loss: the record ends at step 3, training goes on to step 6 (3 value(s) missing: truncated)"
    )
    assert verdict.losses == 4
    record.metrics["loss"] = []
    assert check(record, result).describe() == (
        "differs at metric loss: the record is empty, training goes on to step 6 (7 value(s) missing: truncated)"
    )


def test_a_history_longer_than_training_logs(trained):
    result = trained["converged"]
    record = record_of(result)
    record.metrics["loss"].append((7, 0.25))
    assert check(record, result).describe() == (
        "differs at metric loss: the record has 1 value(s) more than training logs, from 0.25 at step 7"
    )


def test_metrics_missing_or_extra_but_never_the_wall_time(trained):
    result = trained["converged"]
    record = record_of(result)
    record.metrics["train_seconds"] = [(0, 12345.0)]
    assert check(record, result).identical
    del record.metrics["train_seconds"]
    assert check(record, result).identical
    del record.metrics["initial_loss"]
    record.metrics["test_accuracy"] = [(0, 1.0), (1, 1.0)]
    lines = [difference.line() for difference in check(record, result).differences]
    assert lines == [
        "differs at metric initial_loss: missing from the record; training logs 1 value(s)",
        "differs at metric test_accuracy: logged (2 value(s)), but training does not produce it",
    ]


def test_loss_is_compared_first(trained):
    result = trained["converged"]
    record = record_of(result)
    record.metrics["final_loss"] = [(6, 0.5)]
    record.metrics["loss"][0] = (0, 0.5)
    assert check(record, result).differences[0].where == "metric loss at step 0"


def test_a_changed_tensor_entry_a_missing_tensor_and_a_changed_shape(trained):
    result = trained["converged"]
    record = record_of(result)
    record.checkpoints[6]["fc2.bias"][7] += 1e-3
    logged = float(record.checkpoints[6]["fc2.bias"][7])
    retrained = float(result.final_weights["fc2.bias"][7])
    verdict = check(record, result)
    assert verdict.describe() == (
        f"differs at checkpoint at step 6, tensor fc2.bias[7]: logged {logged!r}, "
        f"retrained {retrained!r} (difference {abs(logged - retrained):.3g})"
    )
    record = record_of(result)
    del record.models[4]["conv1.bias"]
    assert (
        check(record, result).describe() == "differs at LoggedModel at step 4, tensor conv1.bias: missing from "
        "the record"
    )
    record = record_of(result)
    record.models[4]["extra"] = torch.zeros(1)
    assert check(record, result).describe() == (
        "differs at LoggedModel at step 4, tensor extra: missing from the retrained net"
    )
    record = record_of(result)
    record.checkpoints[4]["fc3.bias"] = torch.zeros(11)
    assert check(record, result).describe() == (
        "differs at checkpoint at step 4, tensor fc3.bias: shape (11,) logged, (10,) retrained"
    )


def test_stored_values():
    assert reproduce.as_stored(math.inf) == sys.float_info.max
    assert reproduce.as_stored(-math.inf) == -sys.float_info.max
    assert reproduce.as_stored(0.25) == 0.25
    assert reproduce.same_bits(sys.float_info.max, math.inf)
    assert reproduce.same_bits(math.nan, math.nan)
    assert not reproduce.same_bits(math.nan, 0.0) and not reproduce.same_bits(0.0, math.nan)
    assert not reproduce.same_bits(0.25, math.nextafter(0.25, 1))


# ---------------------------------------------------------------------------------------------------------
# What the run's `record` setting keeps: weights files and its cell's model (weights), nothing (none)


def kept_as(result, record: str, models_at: tuple[int, ...] = ()) -> LoggedRun:
    """The record of a run whose `record` param is `record`: under weights, its weights files and a LoggedModel
    at models_at (a cell's median seed: its last step); under none, no weights."""
    weights = {**result.checkpoints, result.final_step: result.final_weights} if result.final_weights else {}
    spec = dataclasses.replace(result.spec, record=record)
    return record_of(
        result,
        spec=spec,
        checkpoints={},
        models={step: copy.deepcopy(weights[step]) for step in models_at},
        weights=copy.deepcopy(weights) if record == "weights" else {},
    )


def test_weights_checks_every_file_and_the_cell_model_where_the_run_has_it(trained):
    result = trained["converged"]
    verdict = check(kept_as(result, "weights"), result)
    assert verdict.identical and verdict.weights == {"checkpoint": 0, "model": 0, "weights": 2}
    assert verdict.describe().endswith(
        "2 weights file(s) (20 tensors) bit for bit; no LoggedModel (record = weights: a cell's median seed has one)"
    )
    median = kept_as(result, "weights", models_at=(6,))
    assert check(median, result).describe().endswith("2 weights file(s) and 1 LoggedModel(s) (30 tensors) bit for bit")

    median.weights[6]["fc2.bias"][7] += 1e-3
    assert check(median, result).describe().startswith("differs at weights file at step 6, tensor fc2.bias[7]: ")
    median = kept_as(result, "weights", models_at=(6,))
    median.models[6]["fc1.bias"][0] += 1e-3
    assert check(median, result).describe().startswith("differs at LoggedModel at step 6, tensor fc1.bias[0]: ")
    median = kept_as(result, "weights", models_at=(6,))
    del median.weights[4]
    median.unreadable["weights", 4] = "weights/step-000004.pth: damaged"
    assert check(median, result).describe() == (
        "differs at weights file at step 4: missing (weights/step-000004.pth: damaged); the record says the run "
        "finished, so it keeps these weights"
    )
    median = kept_as(result, "weights")
    median.unreadable["model", 6] = "LoggedModel m-1: its status is FAILED"  # linked, but unreadable
    assert (
        check(median, result)
        .describe()
        .startswith("differs at LoggedModel at step 6: missing (LoggedModel m-1: its status is FAILED)")
    )
    extra = kept_as(result, "weights")
    extra.models[5] = copy.deepcopy(result.final_weights)  # a model at a step that is no checkpoint
    assert (
        check(extra, result)
        .describe()
        .startswith(
            "differs at LoggedModel at step 5: in the record, but a finished run of these settings keeps none there"
        )
    )


def test_none_checks_metrics_and_outcome_and_says_the_weights_were_not_kept(trained):
    result = trained["converged"]
    verdict = check(kept_as(result, "none"), result)
    assert verdict.identical and verdict.tensors == 0
    assert verdict.describe() == (
        "identical: run r1 retrained from its record gives all 7 logged losses, 2 other metric value(s) bit for "
        "bit; weights not kept (record = none): metrics and outcome checked"
    )
    extra = kept_as(result, "none", models_at=(6,))
    assert (
        check(extra, result)
        .describe()
        .startswith(
            "differs at LoggedModel at step 6: in the record, but a finished run of these settings keeps none there"
        )
    )
    record = kept_as(result, "none")
    record.metrics["loss"][2] = (2, record.metrics["loss"][2][1] + 1e-6)
    assert check(record, result).describe().startswith("differs at metric loss at step 2: ")
    record = kept_as(result, "none")
    record.spec = dataclasses.replace(record.spec, record="everything")
    assert check(record, result).describe().startswith("differs at params: record 'everything' is none of ")
