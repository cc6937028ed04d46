"""docs/python-api.md is a notebook: its python blocks run here, in order, in one namespace, on a fresh store."""

from __future__ import annotations

import re

from tests.conftest import PROJECT_ROOT

PAGE = PROJECT_ROOT / "docs" / "python-api.md"


def python_blocks(text: str) -> list[str]:
    """The ```python fenced blocks of a markdown page, in order."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def test_python_blocks_are_found():
    blocks = python_blocks("text\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = a\n```\n")
    assert blocks == ["a = 1\n", "b = a\n"]


def test_the_python_api_page_runs_top_to_bottom(store_uri, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    blocks = python_blocks(PAGE.read_text())
    assert len(blocks) >= 8
    namespace: dict = {"__name__": "python_api_page"}
    for number, block in enumerate(blocks, start=1):
        code = compile(block, f"{PAGE.name}, python block {number}", "exec")
        exec(code, namespace)  # noqa: S102 - the page's own code, as a notebook runs it
    import matplotlib.pyplot as plt

    plt.close("all")
    printed = capsys.readouterr().out
    assert "12 runs" in printed and "identical" in printed
    assert namespace["outcome"].counts.total == 12 and namespace["verdict"].identical
    assert len(namespace["runs"]) == 12 and set(namespace["curves"]["metric"]) == {"loss"}
    assert list(namespace["table"].columns)[:3] == ["rank", "optimizer", "lr"] and len(namespace["table"]) == 4
    assert (tmp_path / "api-tour-loss.png").read_bytes().startswith(b"\x89PNG")
