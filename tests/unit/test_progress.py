"""The sweep's progress bar on a terminal: it names the run training now and counts the runs that diverged."""

from __future__ import annotations

import io
import re
import sys

from tinytrain.spec import load_experiment
from tinytrain.sweep import _progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def shown(output: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", output)


def test_the_bar_names_the_run_training_and_counts_the_diverged_runs(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    spec = load_experiment(None, ["optimizer=adam", "lr=0.1", "seed=0"]).specs()[0]
    recorded = []
    with _progress(total=4, already=1, enabled=True) as bar:
        bar.started(recorded.append)(spec)
        bar.bar.refresh()
        assert "training adam-lr0.1-seed0" in shown(terminal.getvalue())
        assert "1/4" in shown(terminal.getvalue()) and "0 diverged" in shown(terminal.getvalue())
        bar.finished("diverged")
        bar.finished("finished")
        bar.bar.refresh()
    assert recorded == [spec]  # the start is still recorded
    final = shown(terminal.getvalue()).splitlines()[-1]
    assert "3/4" in final and "1 diverged" in final


def test_no_bar_off_a_terminal_or_when_quiet(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with _progress(total=4, already=0, enabled=True) as bar:
        recorded = []
        bar.started(recorded.append)("spec")
        bar.finished("diverged")
    assert recorded == ["spec"] and bar.bar is None and sys.stderr.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", Terminal())
    with _progress(total=4, already=0, enabled=False) as bar:
        assert bar.bar is None
