"""MkDocs hooks (mkdocs.yml): the pages' tables that come from the code, made at build time.

- `<!-- optimizer-catalogue -->` becomes the table of tinytrain/optimizers.py: every name, its class, its
  default learning rate and hyperparameters, and whether the batched engine has its update.
- The examples of the commands' help (click's unwrapped `\b` paragraphs, which mkdocs-click leaves as a
  paragraph) are shown as code on the command-line page.
- The settings table of experiment-files.md (the rows whose first cell is a `name` in backticks, under
  `<!-- settings-table -->`) is checked against tinytrain/spec/settings.py: every setting is listed once,
  with its default, and nothing else. A difference fails the build.
"""

from __future__ import annotations

import math
import re
import tomllib
from typing import Any

CATALOGUE_MARKER = "<!-- optimizer-catalogue -->"
HELP_EXAMPLE = re.compile(r"<p>(Example[^:<\n]*:)\n(.*?)</p>", re.DOTALL)
SETTINGS_MARKER = "<!-- settings-table -->"


def _value(value: Any) -> str:
    if value is None:
        return "derived"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, tuple):
        return "(" + ", ".join(_value(item) for item in value) + ")"
    if isinstance(value, str):
        return f'"{value}"'
    return f"{value:g}" if isinstance(value, float) else str(value)


def optimizer_table() -> str:
    from tinytrain.optimizers import OPTIMIZERS, VMAP_KINDS

    rows = [
        "| name | class | default lr | hyperparameters and their defaults | batched engine |",
        "| --- | --- | ---: | --- | :---: |",
    ]
    for name, (class_path, lr, hyperparameters) in OPTIMIZERS.items():
        source = class_path if "." in class_path else f"torch.optim.{class_path}"
        if name == "muon":
            source = "torch.optim.Muon + torch.optim.AdamW"
        listed = ", ".join(f"`{key}={_value(value)}`" for key, value in hyperparameters.items())
        rows.append(f"| `{name}` | `{source}` | {lr:g} | {listed} | {'yes' if name in VMAP_KINDS else ''} |")
    return "\n".join(rows)


def settings_rows(markdown: str) -> dict[str, str]:
    """setting -> its default cell, from the table after SETTINGS_MARKER."""
    table = markdown.split(SETTINGS_MARKER, 1)[1].lstrip("\n")
    rows = {}
    for line in table.splitlines():
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        match = re.fullmatch(r"`([a-z_]+)`", cells[0])
        if match:
            rows[match.group(1)] = cells[1].strip("`")
    return rows


def check_settings_table(markdown: str) -> None:
    from tinytrain.spec.settings import DEFAULTS

    rows = settings_rows(markdown)
    missing, unknown = sorted(set(DEFAULTS) - set(rows)), sorted(set(rows) - set(DEFAULTS))
    if missing or unknown:
        raise ValueError(f"experiment-files.md settings table: missing {missing}, not settings {unknown}")
    for name, cell in rows.items():
        value = None if cell == "unset" else tomllib.loads(f"value = {cell}")["value"]
        if value != DEFAULTS[name]:
            raise ValueError(f"experiment-files.md: the default of {name} is {DEFAULTS[name]!r}, the table says {cell}")


def on_page_markdown(markdown: str, page, config, files) -> str:
    if CATALOGUE_MARKER in markdown:
        markdown = markdown.replace(CATALOGUE_MARKER, optimizer_table())
    if SETTINGS_MARKER in markdown:
        check_settings_table(markdown)
    return markdown


def on_page_content(html: str, page, config, files) -> str:
    if page.file.src_uri != "cli.md":
        return html

    def as_code(match: re.Match) -> str:
        lines = [line.strip() for line in match.group(2).splitlines()]
        return f"<p>{match.group(1)}</p>\n<pre><code>{chr(10).join(lines)}</code></pre>"

    return HELP_EXAMPLE.sub(as_code, html)
