"""Tables as text for every place a report goes: a terminal (fitted to its width), markdown, LaTeX (booktabs),
csv; each with its title and caption.

A terminal table that is wider than the terminal loses columns, the widest first, except those the caller keeps
(the row's name and the column it is ranked by); when even those do not fit, each row is stacked as lines of
"header: value". Titles and captions are wrapped to the width. Without a width the table is laid out in
UNBOUNDED columns (a pipe, a file): no column is dropped.
"""

from __future__ import annotations

import csv
import io
import textwrap
from collections.abc import Iterable, Sequence

UNBOUNDED = 250


def rich_lines(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: Iterable[int], sections=(), width: int = UNBOUNDED
) -> list[str]:
    """The table laid out by rich in `width` columns, as plain lines: no colours, no wrapping (a row wider than
    the width is cut short), trailing spaces cut."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    right = set(right)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for index, name in enumerate(header):  # Text: "[95% CI]" and "E[best of k]" are words, not markup
        table.add_column(Text(name), justify="right" if index in right else "left", no_wrap=True)
    section_ends = set(sections)
    for index, row in enumerate(rows):
        table.add_row(*map(Text, row), end_section=index in section_ends)
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, highlight=False, emoji=False).print(table)
    return [line.rstrip() for line in buffer.getvalue().rstrip().splitlines()]


def fit_columns(
    header: Sequence[str], rows: Sequence[Sequence[str]], width: int, keep: Iterable[int] = ()
) -> list[int] | None:
    """The indices of the columns to show so that the table fits `width`: the widest column not kept goes
    first, then the next; None when even the kept columns do not fit (stack the rows instead)."""
    from rich.cells import cell_len

    keep = set(keep)
    shown = list(range(len(header)))
    # A column is as wide as its widest cell (no cell wraps), so the table is as wide as a table of one row of
    # each column's widest cell: laid out instead of every row, once per column dropped
    widest_cells = [[max((row[index] for row in rows), key=cell_len) for index in shown]] if rows else []

    def table_width(columns: list[int]) -> int:
        lines = rich_lines(
            [header[i] for i in columns], [[row[i] for i in columns] for row in widest_cells], (), (), 10_000
        )
        return max(map(len, lines), default=0)

    while table_width(shown) > width:
        droppable = [index for index in shown if index not in keep]
        if not droppable:
            return None
        widest = max(droppable, key=lambda index: (_width(header, rows, index), index))
        shown.remove(widest)
    return shown


def _width(header: Sequence[str], rows: Sequence[Sequence[str]], index: int) -> int:
    return max([len(header[index])] + [len(row[index]) for row in rows])


def terminal_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    right: Iterable[int],
    title: str = "",
    caption: str = "",
    width: int | None = None,
    keep: Iterable[int] = (0,),
    sections: Iterable[int] = (),
) -> str:
    """The table for a terminal `width` columns wide (None: unbounded): fewer columns, or stacked rows."""
    right = set(right)
    if width is None:
        lines = rich_lines(header, rows, right, sections)
        return "\n".join(([title] if title else []) + lines + (["", caption] if caption else [])) + "\n"
    shown = fit_columns(header, rows, width, keep)
    if shown is None:
        lines = _stacked(header, rows, list(keep), width)
    else:
        positions = {index: position for position, index in enumerate(shown)}
        lines = rich_lines(
            [header[index] for index in shown],
            [[row[index] for index in shown] for row in rows],
            {positions[index] for index in right if index in positions},
            sections,
        )
        dropped = [header[index] for index in range(len(header)) if index not in positions]
        if dropped:
            caption = (caption + " " if caption else "") + f"Not shown at {width} columns: {', '.join(dropped)}."
    text = wrap(title, width) + lines + ([""] + wrap(caption, width) if caption else [])
    return "\n".join(text) + "\n"


def _stacked(header: Sequence[str], rows: Sequence[Sequence[str]], keep: list[int], width: int) -> list[str]:
    """Each row as a line of its kept columns, then one indented line per other column."""
    lines: list[str] = []
    for row in rows:
        lines += wrap("  ".join(row[index] for index in keep), width)
        for index, name in enumerate(header):
            if index not in keep:
                lines += wrap(f"  {name}: {row[index]}", width, indent="    ")
        lines.append("")
    return lines[:-1]


def wrap(text: str, width: int, indent: str = "") -> list[str]:
    if not text:
        return []
    indent = indent if len(indent) < width // 2 else ""
    return textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False) or [""]


def markdown(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: Iterable[int], title: str, caption: str
) -> str:
    right = set(right)
    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---:" if index in right else "---" for index in range(len(header))) + "|")
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    if caption:
        lines += ["", caption]
    return "\n".join(lines) + "\n"


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "—": "---",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
    "±": r"$\pm$",
}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(character, character) for character in text)


def latex(header: Sequence[str], rows: Sequence[Sequence[str]], right: Iterable[int], title: str, caption: str) -> str:
    """A booktabs table (\\usepackage{booktabs}) in a table float, the caption above it, the title as a comment."""
    right = set(right)
    spec = "".join("r" if index in right else "l" for index in range(len(header)))
    lines = [f"% {title}"] if title else []
    lines += ["\\begin{table}[t]", "\\centering"]
    if caption:
        lines.append(f"\\caption{{{latex_escape(caption)}}}")
    lines += [f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    lines.append(" & ".join(latex_escape(name) for name in header) + " \\\\")
    lines.append("\\midrule")
    lines += [" & ".join(latex_escape(cell) for cell in row) + " \\\\" for row in rows]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def csv_text(header: Sequence[str], rows: Iterable[Sequence[str]], title: str = "", caption: str = "") -> str:
    """csv with the title and caption as leading '# ' lines (pandas: read_csv(path, comment="#"))."""
    buffer = io.StringIO()
    for line in (title, caption):
        if line:
            buffer.write(f"# {line}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
