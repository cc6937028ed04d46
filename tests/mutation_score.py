"""The score of a `mutmut run` per module, from mutmut's own results (mutants/**/*.py.meta): make mutation.

A mutant counts as killed when a test failed (or ran out of time) with it; a mutant that no fast test
reaches counts against the score like a survivor. Exits 1 when a module is under the target.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

TARGET = 0.85
KILLED = {1: "killed", 3: "killed", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout"}
NOT_RUN = {None: "not checked", 34: "skipped"}


def verdict(exit_code: int | None) -> str:
    if exit_code in KILLED:
        return KILLED[exit_code]
    if exit_code in NOT_RUN:
        return NOT_RUN[exit_code]
    return {0: "survived", 5: "no tests", 33: "no tests"}.get(exit_code, "suspicious")


def main(root: Path = Path("mutants")) -> int:
    below = []
    print(f"{'module':<24} {'mutants':>7} {'killed':>7} {'survived':>8} {'no tests':>8} {'score':>6}")
    for meta in sorted(root.rglob("*.py.meta")):
        module = str(meta.relative_to(root)).removesuffix(".meta")
        results = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter(verdict(code) for code in results.values())
        counted = sum(counts.values()) - counts["not checked"] - counts["skipped"]
        killed = counts["killed"] + counts["timeout"]
        score = killed / counted if counted else 1.0
        print(f"{module:<24} {counted:>7} {killed:>7} {counts['survived']:>8} {counts['no tests']:>8} {score:>6.1%}")
        if score < TARGET:
            below.append(module)
        if "--survivors" in sys.argv:
            for key, code in sorted(results.items()):
                if verdict(code) in ("survived", "no tests", "suspicious"):
                    print(f"    {verdict(code):<9} {key}")
    if below:
        print(f"under the target of {TARGET:.0%}: {', '.join(below)}")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
