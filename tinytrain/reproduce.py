"""reproduce: train a logged run again from its record alone and check everything the record claims.

What a user reads of a run is checked, each value bit for bit: every metric it logged (but the wall-time
ones, results.TIMING_METRICS), its outcome, every checkpoint its settings imply (a missing one is a
difference, not a diverged run: only the record's outcome says a run diverged), each kept as a LoggedModel
(and, in older stores, as a checkpoints/*.pt state dict too: both are checked there), or as the weights files
and the cell's LoggedModel its `record` setting keeps (none at all with record = none, which the verdict says),
and that its params still give its run key. Pure torch and plain data: the record comes in
through tracking.read_logged_run (a LoggedRun), read without unpickling any code.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from tinytrain import plugins
from tinytrain.engines.sequential import EVALUATION, plugin_provenance, train
from tinytrain.results import (
    FINISHED,
    STOPPED,
    STOPPED_AT,
    TIMING_METRICS,
    VIEW_METRICS,
    RunResult,
    StateDict,
    current_outcome,
)
from tinytrain.spec import RunSpec
from tinytrain.spec.settings import RECORDS

# What MLflow keeps of a non-finite metric: NaN as NaN, +-inf as +-the largest float.
STORED_INF = sys.float_info.max

History = list[tuple[int, float]]  # [(step, value)] in step order


class Record(Protocol):
    """What reproduce needs of a logged run (tracking.LoggedRun)."""

    run_id: str
    spec: RunSpec
    tags: dict[str, str]
    metrics: dict[str, History]
    checkpoints: dict[int, StateDict]
    models: dict[int, StateDict]
    weights: dict[int, StateDict]  # record = weights: the run's weights files
    unreadable: dict[tuple[str, int], str]
    legacy: bool  # an older store: checkpoints/*.pt beside the LoggedModels, each checked

    @property
    def outcome(self) -> str | None: ...

    @property
    def logged_key(self) -> str | None: ...


@dataclass(frozen=True)
class Difference:
    where: str  # "metric loss at step 4", "checkpoint at step 6, tensor fc2.bias[7]"
    detail: str  # what the record says against what the retraining gives

    def line(self) -> str:
        return f"differs at {self.where}: {self.detail}"


@dataclass
class Verdict:
    run_id: str
    outcome: str | None
    differences: list[Difference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    losses: int = 0  # logged `loss` values compared
    values: int = 0  # values of the other metrics compared
    weights: dict[str, int] = field(default_factory=lambda: {"checkpoint": 0, "model": 0})  # compared, by kind
    tensors: int = 0
    record: str = "model"  # what the run keeps of its weights (its `record` param)

    @property
    def identical(self) -> bool:
        return not self.differences

    def describe(self) -> str:
        """One line: identical, with what was compared, or the first difference (and how many more)."""
        if self.differences:
            more = len(self.differences) - 1
            return self.differences[0].line() + (f" (and {more} more difference(s))" if more else "")
        checkpoints, models = self.weights["checkpoint"], self.weights["model"]
        files = self.weights.get("weights", 0)
        kept = [f"{checkpoints} checkpoint(s)"] * bool(checkpoints) + [f"{files} weights file(s)"] * bool(files)
        kept += [f"{models} LoggedModel(s)"] * bool(models)
        weights = f", {' and '.join(kept)} ({self.tensors} tensors)" if kept else ""
        if self.record == "none":
            tail = "; weights not kept (record = none): metrics and outcome checked"
        elif not weights:
            tail = f"; no checkpoint: its record says it {self.outcome}"
        elif self.record == "weights" and not models:
            tail = "; no LoggedModel (record = weights: a cell's median seed has one)"
        else:
            tail = ""
        return (
            f"identical: run {self.run_id} retrained from its record gives all {self.losses} logged losses, "
            f"{self.values} other metric value(s){weights} bit for bit{tail}"
        )


def as_stored(value: float) -> float:
    """A value as MLflow stores it (inf clamped to the largest float)."""
    if math.isinf(value):
        return math.copysign(STORED_INF, value)
    return value


def same_bits(logged: float, retrained: float) -> bool:
    retrained = as_stored(retrained)
    return logged == retrained or (math.isnan(logged) and math.isnan(retrained))


def reproduce(record: Record, retrain: Callable[[RunSpec], RunResult] = train) -> Verdict:
    """Train the record's spec again; compare key, outcome, every metric and all the weights it keeps."""
    verdict = Verdict(record.run_id, current_outcome(record.outcome), record=record.spec.record)
    verdict.notes = [
        f"recorded {name} {record.tags[key]}, running {current}"
        for name, key, current in (("torch", "tinytrain.torch", torch.__version__),)
        if record.tags.get(key) not in (None, current)
    ]
    verdict.notes += plugin_notes(record)
    if record.logged_key != record.spec.key:
        verdict.differences.append(
            Difference(
                "params",
                f"they give run key {record.spec.key}, the run's tag says {record.logged_key}: the params "
                "or the key were changed, or another version of tinytrain wrote them",
            )
        )
    result = retrain(spec_to_retrain(record))
    if current_outcome(record.outcome) != result.outcome:
        verdict.differences.append(Difference("outcome", f"logged {record.outcome}, retrained {result.outcome}"))
    compare_metrics(record.metrics, result.logged_metrics(), verdict)
    if record.spec.record not in RECORDS:
        verdict.differences.append(
            Difference(
                "params", f"record {record.spec.record!r} is none of {', '.join(RECORDS)}: its weights unchecked"
            )
        )
        return verdict
    for kind, logged, expected in kept_weights(record, expected_weights(record, result)):
        compare_weights(kind, logged, expected, record.unreadable, verdict)
    return verdict


def kept_weights(
    record: Record, expected: dict[int, StateDict | None]
) -> list[tuple[str, dict[int, StateDict], dict[int, StateDict | None]]]:
    """(kind, the record's weights of that kind, the ones its `record` setting implies) for each kind of weights:

    model: a LoggedModel at every checkpoint; weights: a weights file at every checkpoint, and a LoggedModel
    only for its cell's median seed (so the ones the run has, each checked, and extra steps named); none: no
    weights (any found is named). Older stores also keep checkpoints/*.pt, each checked.
    """
    kinds: list[tuple[str, dict[int, StateDict], dict[int, StateDict | None]]] = []
    if record.legacy or record.checkpoints:  # older stores: the state dict files too
        kinds.append(("checkpoint", record.checkpoints, expected))
    if record.spec.record == "model":
        return [*kinds, ("model", record.models, expected)]
    if record.spec.record == "weights":
        kinds.append(("weights", record.weights, expected))
        linked = set(record.models) | {step for kind, step in record.unreadable if kind == "model"}
        return [*kinds, ("model", record.models, {step: expected[step] for step in linked if step in expected})]
    return [*kinds, ("weights", record.weights, {}), ("model", record.models, {})]


def plugin_notes(record: Record) -> list[str]:
    """How the run's plugins here differ from the ones it recorded (a version, a source hash), one line each.

    A plugin that cannot be imported here is a PluginError (bad input: nothing can be retrained), in one
    line that names what the record says it was.
    """
    try:
        current = plugin_provenance(record.spec)
    except plugins.PluginError as error:
        recorded = {role: _recorded_plugin(record.tags, role) for role in ("optimizer", "problem")}
        described = "; ".join(f"{role} {text}" for role, text in recorded.items() if text)
        raise plugins.PluginError(
            f"run {record.run_id} needs a plugin this Python cannot use ({error})"
            + (f"; the run recorded {described}" if described else "")
        ) from None
    notes = []
    for role in ("optimizer", "problem"):
        prefix = f"plugin.{role}."
        for field_name, label in (("class", "class"), ("version", "version"), ("source_sha256", "source sha256")):
            logged, here = record.tags.get(f"tinytrain.{prefix}{field_name}"), current.get(prefix + field_name)
            if logged is not None and here is not None and logged != here:
                where = current.get(prefix + "class", "")
                notes.append(
                    f"the {role} plugin {where} differs from the record: {label} {logged} recorded, {here} here"
                )
    return notes


def _recorded_plugin(tags: dict[str, str], role: str) -> str:
    found = {
        key.rpartition(".")[2]: value for key, value in tags.items() if key.startswith(f"tinytrain.plugin.{role}.")
    }
    if "class" not in found:
        return ""
    where = f" from {found['distribution']} {found.get('version', '')}".rstrip() if "distribution" in found else ""
    return f"{found['class']}{where}"


# ---------------------------------------------------------------------------------------------------------
# Metrics


def compare_metrics(logged: dict[str, History], retrained: dict[str, History], verdict: Verdict) -> None:
    """Every metric of either side but the timing ones and the UI's (derived from the loss); `loss` first."""
    skipped = set(TIMING_METRICS) | set(VIEW_METRICS)
    names = sorted((set(logged) | set(retrained)) - skipped, key=lambda name: (name != "loss", name))
    for name in names:
        if name not in logged:
            verdict.differences.append(
                Difference(f"metric {name}", f"missing from the record; training logs {len(retrained[name])} value(s)")
            )
        elif name not in retrained:
            verdict.differences.append(
                Difference(f"metric {name}", f"logged ({len(logged[name])} value(s)), but training does not produce it")
            )
        else:
            difference = compare_history(name, logged[name], retrained[name])
            if difference is not None:
                verdict.differences.append(difference)
            compared = min(len(logged[name]), len(retrained[name]))
            if name == "loss":
                verdict.losses += compared
            else:
                verdict.values += compared


def compare_history(name: str, logged: History, retrained: History) -> Difference | None:
    """The first place where a logged history and the retrained one part: a step, a value or an end."""
    for (step, value), (retrained_step, retrained_value) in zip(logged, retrained, strict=False):
        if step != retrained_step:
            return Difference(
                f"metric {name}",
                f"logged {value!r} at step {step}, where training logs step {retrained_step} ({retrained_value!r})",
            )
        if not same_bits(value, retrained_value):
            retrained_value = as_stored(retrained_value)
            return Difference(
                f"metric {name} at step {step}",
                f"logged {value!r}, retrained {retrained_value!r} (difference {abs(value - retrained_value):.3g})",
            )
    if len(logged) < len(retrained):
        last = f"ends at step {logged[-1][0]}" if logged else "is empty"
        return Difference(
            f"metric {name}",
            f"the record {last}, training goes on to step {retrained[-1][0]} "
            f"({len(retrained) - len(logged)} value(s) missing: truncated)",
        )
    if len(logged) > len(retrained):
        step, value = logged[len(retrained)]
        return Difference(
            f"metric {name}",
            f"the record has {len(logged) - len(retrained)} value(s) more than "
            f"training logs, from {value!r} at step {step}",
        )
    return None


# ---------------------------------------------------------------------------------------------------------
# Weights


def spec_to_retrain(record: Record) -> RunSpec:
    """The record's spec; a run the budget stopped is retrained to the step it stopped at (its tag). A run
    recorded without the `evaluation` tag was trained before evaluations restored a schedule-free optimizer's
    weights exactly: it is retrained with train()'s round trip, as it was (no effect on other optimizers)."""
    spec = record.spec
    if f"tinytrain.{EVALUATION}" not in record.tags:
        spec = dataclasses.replace(spec, round_trip_evaluation=True)
    stopped_at = record.tags.get(f"tinytrain.{STOPPED_AT}", "")
    if record.outcome == STOPPED and stopped_at.isdigit():
        return dataclasses.replace(spec, stop_at=int(stopped_at))
    return spec


def expected_weights(record: Record, result: RunResult) -> dict[int, StateDict | None]:
    """step -> retrained weights of every checkpoint the record's settings and outcome imply.

    Only a run whose record says it finished (converged, in an older store) keeps weights: its final ones
    and every checkpoint_every step's (None where the retraining has none to compare, e.g. it diverged).
    """
    retrained = {**result.checkpoints, result.final_step: result.final_weights}
    if record.outcome == STOPPED:  # its weights where the budget stopped it, and the checkpoints before
        end = spec_to_retrain(record).stop_step
        return {step: retrained.get(step) for step in (*record.spec.checkpoint_steps, end) if step <= end}
    if current_outcome(record.outcome) != FINISHED:
        return {}
    return {step: retrained.get(step) for step in (*record.spec.checkpoint_steps, record.spec.steps)}


def compare_weights(
    kind: str,
    logged: dict[int, StateDict],
    expected: dict[int, StateDict | None],
    unreadable: dict[tuple[str, int], str],
    verdict: Verdict,
) -> None:
    """Each expected checkpoint (LoggedModel, weights file) is in the record, tensor for tensor; none is extra."""
    label = {"checkpoint": "checkpoint", "model": "LoggedModel", "weights": "weights file"}[kind]
    for step in sorted(set(expected) | set(logged)):
        where = f"{label} at step {step}"
        if step not in expected:
            verdict.differences.append(
                Difference(where, f"in the record, but a {verdict.outcome} run of these settings keeps none there")
            )
        elif step not in logged:
            reason = unreadable.get(
                (kind, step),
                "the run has no LoggedModel at this step" if kind == "model" else "not in the run's artifacts",
            )
            verdict.differences.append(
                Difference(
                    where, f"missing ({reason}); the record says the run {verdict.outcome}, so it keeps these weights"
                )
            )
        elif expected[step] is not None:
            verdict.weights[kind] = verdict.weights.get(kind, 0) + 1
            difference = compare_state_dicts(where, logged[step], expected[step], verdict)
            if difference is not None:
                verdict.differences.append(difference)


def compare_state_dicts(where: str, logged: StateDict, retrained: StateDict, verdict: Verdict) -> Difference | None:
    """The first tensor (and entry) that differs, or is missing on either side."""
    for name in sorted(set(logged) | set(retrained)):
        if name not in logged or name not in retrained:
            side = "the record" if name not in logged else "the retrained net"
            return Difference(f"{where}, tensor {name}", f"missing from {side}")
        mine, theirs = torch.as_tensor(logged[name]), torch.as_tensor(retrained[name])
        verdict.tensors += 1
        if mine.shape != theirs.shape:
            return Difference(
                f"{where}, tensor {name}", f"shape {tuple(mine.shape)} logged, {tuple(theirs.shape)} retrained"
            )
        if not torch.equal(mine, theirs):
            index = int((mine != theirs).flatten().nonzero()[0])
            a, b = float(mine.flatten()[index]), float(theirs.flatten()[index])
            return Difference(
                f"{where}, tensor {name}[{index}]", f"logged {a!r}, retrained {b!r} (difference {abs(a - b):.3g})"
            )
    return None
