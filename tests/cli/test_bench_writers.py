"""The benchmarks count every writer of a real sweep: with writers=2 both processes are seen and their CPU summed,
whether each reported its own usage (TINYTRAIN_WRITER_USAGE) or the sweep's exit cut one short."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
bench = importlib.import_module("bench")


def test_a_sweep_with_two_writers_is_counted_whole(tmp_path, experiment_file):
    experiment = experiment_file(name="tiny", steps=2, grid={"optimizer": ["sgd"], "lr": [0.01, 0.1], "seed": [0, 1]})
    usage_file, spawned = tmp_path / "usage", {}
    command = [str(bench.BIN / "tinytrain"), "sweep", experiment, "--quiet", "--set", "writers=2"]
    started = time.monotonic()
    bench.run(
        [*command, "--tracking-uri", str(tmp_path / "store" / "mlflow.db")],
        tmp_path,
        {"TINYTRAIN_WRITER_USAGE": str(usage_file)},
        spawned,
    )
    wall = time.monotonic() - started
    usage = bench.writers_usage(usage_file, 2, spawned)
    assert len(spawned) == 2  # the sweep's writer and one run writer
    assert 1 < usage["cpu"] < 2 * wall + 1  # two processes that imported MLflow, within two cores' time
    assert usage["max_rss_mib"] > 50
    assert 1 < usage["sampled_cpu"] <= usage["cpu"] + 2 * bench.SAMPLE_EVERY * 2
    if usage["source"] == "reported":
        assert sum(usage["runs_written"]) == 4  # each run written once, by one of the two
