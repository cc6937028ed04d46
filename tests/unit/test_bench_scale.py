"""The scale benchmark's helpers (benchmarks/scale.py, bench.py): variants, the writers' usage summed, the goals
(a real sweep's writers: tests/cli/test_bench_writers.py)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
bench = importlib.import_module("bench")
scale = importlib.import_module("scale")


def test_a_variant_is_engine_record_writers():
    variant = scale.parse_variant("vmap-none-w2")
    assert (variant.engine, variant.record, variant.writers) == ("vmap", "none", 2)
    assert variant.name == "vmap-none-w2"
    assert variant.sets == ["--set", "engine=vmap", "--set", "record=none", "--set", "writers=2"]
    for names in scale.DEFAULT_VARIANTS.values():
        assert [scale.parse_variant(name).name for name in names] == list(names)


@pytest.mark.parametrize("name", ["vmap-none", "vmap-all-w1", "gpu-none-w1", "vmap-none-w0", "vmap-none-2"])
def test_a_bad_variant_is_refused(name):
    with pytest.raises(argparse.ArgumentTypeError, match="ENGINE-RECORD-wN"):
        scale.parse_variant(name)


def usage_line(user: float, system: float, rss: float, runs: int) -> str:
    return json.dumps({"user": user, "system": system, "max_rss_mib": rss, "runs_written": runs, "imported": []})


def test_every_writers_line_is_summed(tmp_path):
    path = tmp_path / "usage"
    path.write_text(usage_line(1.0, 0.5, 200, 10) + "\n" + usage_line(2.0, 0.25, 230, 50) + "\n")
    usage = bench.writers_usage(path, 2, {}, wait=0)
    assert usage["cpu"] == pytest.approx(3.75)
    assert usage["max_rss_mib"] == 230
    assert usage["runs_written"] == [10, 50]
    assert usage["source"] == "reported"


def test_a_writer_that_did_not_report_is_counted_from_the_samples(tmp_path):
    path = tmp_path / "usage"
    path.write_text(usage_line(1.0, 0.5, 200, 10) + "\n")
    spawned = {11: {"cpu": 1.4, "max_rss_mib": 210.0}, 12: {"cpu": 2.1, "max_rss_mib": 240.0}}
    usage = bench.writers_usage(path, 2, spawned, wait=0)
    assert usage["cpu"] == pytest.approx(3.5)
    assert usage["max_rss_mib"] == 240
    assert usage["source"].startswith("sampled (1 of 2 reported")
    with pytest.raises(SystemExit, match="1 of 2 writers"):
        bench.writers_usage(path, 2, {}, wait=0)


def test_spawned_children_are_sampled_and_others_are_not(tmp_path):
    """A real multiprocessing spawn child is sampled (its CPU and peak RSS), a plain subprocess is not."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing, subprocess, time\n"
        "def burn():\n"
        "    end = time.process_time() + 0.6\n"
        "    while time.process_time() < end: pass\n"
        "if __name__ == '__main__':\n"
        "    other = subprocess.Popen(['sleep', '2'])\n"
        "    child = multiprocessing.get_context('spawn').Process(target=burn)\n"
        "    child.start(); child.join(); other.wait()\n"
    )
    spawned: dict[int, dict] = {}
    wall, _rss, _out = bench.run([sys.executable, str(script)], tmp_path, None, spawned)
    assert wall >= 2
    assert len(spawned) == 1
    (child,) = spawned.values()
    assert 0.3 <= child["cpu"] <= 0.6 + 0.05  # sampled every SAMPLE_EVERY: at most that much missed
    assert child["max_rss_mib"] > 5


def result(role: str, ratios: dict[str, float], rss: dict[str, float], reads: dict[str, float]) -> dict:
    """What measure returns, for one round of the given variants (plain loop 100 s)."""
    variants = [scale.parse_variant(name) for name in ratios]
    one_round = {
        "b": 100.0,
        "rss_b": 300.0,
        "wall": {name: ratio * 100 for name, ratio in ratios.items()},
        "cpu": dict.fromkeys(ratios, 30.0),
        "rss": rss,
        "writer_rss": dict.fromkeys(ratios, 220.0),
        "artifacts": {name: 100.0 if "none" in name else 250_000.0 for name in ratios},
    }
    return {"role": role, "experiment": f"{role}.toml", "runs": 1000, "variants": variants, "rounds": [one_round],
            "reads": reads}  # fmt: skip


def test_each_goal_is_judged_on_its_variant():
    results = {
        "10k": result(
            "10k",
            {"vmap-none-w1": 1.3, "vmap-none-w2": 1.1, "vmap-model-w1": 1.7, "sequential-model-w1": 2.2},
            {"vmap-none-w1": 400, "vmap-none-w2": 400, "vmap-model-w1": 460, "sequential-model-w1": 400},
            {"compare": 2.5, "plot": 3.5, "dry-run": 0.2},
        ),
        "1k": result(
            "1k",
            {"vmap-none-w1": 0.7, "vmap-model-w1": 0.85},
            {"vmap-none-w1": 400, "vmap-model-w1": 400},
            {},
        ),
    }
    lines = {what.split(":")[0]: (measured, met) for what, measured, _goal, met in scale.goals(results)}
    assert lines["10k x 10, batched engine, lightest record (none)"] == ("1.10 (vmap-none-w2; rounds 1.10)", True)
    assert lines["10k x 10, batched engine, default record (model)"][1] is False
    assert lines["1k x 100, batched engine, default record (model)"] == ("0.85 (vmap-model-w1; rounds 0.85)", True)
    assert lines["10k x 10, lightest record"] == ("0.1 MB", True)
    assert lines["memory flat"] == ("1.15 (vmap-model-w1)", True)
    assert lines["10k x 10"] == ("3.50 s", False)  # plot (the last line of that name)


def test_a_goal_without_its_variant_is_not_measured():
    results = {"10k": result("10k", {"sequential-model-w1": 2.0}, {"sequential-model-w1": 400}, {})}
    judged = [met for _what, _measured, _goal, met in scale.goals(results)]
    assert judged == [None] * len(judged)
